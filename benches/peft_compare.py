#!/usr/bin/env python3
"""PyTorch + PEFT (and AdapterHub's `adapters`) beside webpeft, on one model folder.

Times the training step `webpeft bench --train` times (AdamW, clip 1.0, fp32, random tokens at
batch x seq, LoRA r 16 alpha 32 on all linears, and seq_bn), as the median of a few steps after a
warm-up, on --threads CPU threads (or on --device cuda); runs webpeft's bench on the same folder;
prints both, and PyTorch's matmul GFLOP/s at 1024^3 beside webpeft's f32 kernel. A comparison,
not a test.

    python benches/peft_compare.py /tmp/bench-29m --make          # writes the ~30M random model first
    python benches/peft_compare.py MODEL_DIR --webpeft target/release/webpeft --steps 3
    python benches/peft_compare.py --llama-1b --device cuda [--webpeft-json 1b.json]

With --llama-1b: the Llama-3.2-1B shape (random weights, built on the device, nothing saved),
LoRA r 16 on all linears, 1 x 512 tokens, gradient checkpointing, in fp32 and in bf16, beside
`webpeft bench --llama-1b --json` (NF4) when its output is given.

Needs torch, transformers, peft and adapters (tests/fixtures/requirements.txt); without
`adapters` the seq_bn row is left out.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def make_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=7,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, dtype="float32",
    )
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {params / 1e6:.1f}M parameters", file=sys.stderr)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(model, ids, steps: int, device: str) -> float:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_figures(model_dir: Path, batch: int, seq: int, steps: int, device: str) -> dict:
    import importlib.util

    import torch
    from transformers import LlamaForCausalLM

    out = {}
    gen = torch.Generator().manual_seed(7)
    methods = ["lora", "seq_bn"] if importlib.util.find_spec("adapters") else ["lora"]
    for method in methods:
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.config.use_cache = False
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
        else:
            import adapters

            adapters.init(model)
            model.add_adapter("bench", config="seq_bn")
            model.train_adapter("bench")
            model.set_active_adapters("bench")
        model.to(device).train()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        secs = time_steps(model, ids.to(device), steps, device)
        out[method] = {"step_ms": secs * 1e3, "tokens_per_s": batch * (seq - 1) / secs, "trainable": trainable}
    a = torch.randn(1024, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    times = []
    for _ in range(20):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    out["matmul_1024_gflops"] = 2 * 1024**3 / statistics.median(times) / 1e9
    return out


def llama_1b_figures(steps: int, device: str) -> dict:
    """PyTorch + PEFT on the Llama-3.2-1B shape, as `webpeft bench --llama-1b` trains it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
    )
    out = {}
    for dtype in [torch.float32, torch.bfloat16]:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
        model.train()
        ids = torch.randint(0, config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(7)).to(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        secs = time_steps(model, ids, steps, device)
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        out[str(dtype).removeprefix("torch.")] = {"step_ms": secs * 1e3, "tokens_per_s": 511 / secs, "peak_bytes": peak}
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def webpeft_figures(binary: str, model_dir: Path, batch: int, seq: int, steps: int) -> dict:
    cmd = [binary, "bench", "--train", "--json", "--model", str(model_dir), "--batch", str(batch),
           "--seq", str(seq), "--repeats", str(steps), "--methods", "lora,seq_bn"]
    print("running:", " ".join(cmd), file=sys.stderr)
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, nargs="?")
    ap.add_argument("--llama-1b", action="store_true", help="the Llama-3.2-1B shape instead of model_dir (see above)")
    ap.add_argument("--make", action="store_true", help="write the ~30M random Llama into model_dir first")
    ap.add_argument("--webpeft", default="target/release/webpeft", help="the webpeft CLI (built with --features cli)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where PyTorch runs: cpu, or cuda on a GPU machine")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--matmul-gflops", type=float, help="webpeft's f32 1024^3 GFLOP/s, from `webpeft bench`")
    ap.add_argument("--webpeft-json", type=Path, help="use this `webpeft bench --train --json` output instead of running it")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.llama_1b:
        theirs = llama_1b_figures(args.steps, args.device)
        print("Llama-3.2-1B shape, LoRA r16 all-linear, 1x512, gradient checkpointing")
        print("| stack | step ms | tokens/s | peak GPU GiB |")
        print("|---|---:|---:|---:|")
        for dtype, f in theirs.items():
            peak = f"{f['peak_bytes'] / 2**30:.2f}" if f["peak_bytes"] else "-"
            print(f"| PyTorch + PEFT {dtype} ({args.device}) | {f['step_ms']:.0f} | {f['tokens_per_s']:.0f} | {peak} |")
        if args.webpeft_json:
            ours = json.loads(args.webpeft_json.read_text())
            t = ours["train"]
            print(f"| webpeft NF4 ({ours['adapter']['name']}) | {t['step_ms']:.0f} | {t['tokens_per_s']:.0f} "
                  f"| {t['peak_gpu_bytes'] / 2**30:.2f} |")
            print(f"webpeft NF4 step / PyTorch fp32 step: {t['step_ms'] / theirs['float32']['step_ms']:.2f}")
        return
    if args.model_dir is None:
        ap.error("give a model folder, or --llama-1b")
    if args.make:
        make_model(args.model_dir)
    if args.webpeft_json:
        ours = json.loads(args.webpeft_json.read_text())
    else:
        ours = webpeft_figures(args.webpeft, args.model_dir, args.batch, args.seq, args.steps)
    theirs = torch_figures(args.model_dir, args.batch, args.seq, args.steps, args.device)

    where = f"{args.threads} CPU threads" if args.device == "cpu" else args.device
    print(f"model: {args.model_dir}, batch {args.batch} x seq {args.seq}, fp32; PyTorch on {where}; "
          f"webpeft on {ours['adapter']['name']} ({ours['adapter']['backend']})")
    print("| method | trainable params (PyTorch / webpeft) | PyTorch tokens/s | webpeft f32 tokens/s "
          "| webpeft NF4 tokens/s | webpeft f32 / PyTorch |")
    print("|---|---|---:|---:|---:|---:|")
    for method in [m for m in ["lora", "seq_bn"] if m in theirs]:
        # The step of this batch shape, one sequence a row, with webpeft's
        # defaults (a LoRA's term fused where the kernels fuse it).
        mine = {f["quant"]: f for f in ours["train"]
                if f["method"] == method and f.get("examples_per_row", 1) == 1 and f.get("term_fused", True)
                and (f["batch"], f["seq"]) == (args.batch, args.seq)}
        t = theirs[method]["tokens_per_s"]
        f32, nf4 = mine["f32"]["tokens_per_s"], mine["nf4"]["tokens_per_s"]
        name = "LoRA r16 all-linear" if method == "lora" else "seq_bn"
        params = f"{theirs[method]['trainable']:,} / {mine['f32']['adapter_parameters']:,}"
        print(f"| {name} | {params} | {t:.0f} | {f32:.0f} | {nf4:.0f} | {f32 / t:.3f} |")
    line = f"PyTorch {args.device} matmul 1024^3: {theirs['matmul_1024_gflops']:.0f} GFLOP/s"
    if args.matmul_gflops:
        line += f"; webpeft f32: {args.matmul_gflops:.1f} GFLOP/s (ratio {args.matmul_gflops / theirs['matmul_1024_gflops']:.3f})"
    print(line)


if __name__ == "__main__":
    main()
