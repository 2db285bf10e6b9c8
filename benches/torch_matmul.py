#!/usr/bin/env python3
"""webpeft's matmul figures beside PyTorch's on the same device, as ratios.

Reads the JSON of `webpeft bench --kernels --json`, times every f32 product it
lists (same M, N, K and orientation) with torch.matmul in fp32 (TF32 off),
and prints, per shape: webpeft's kernel as picked ("tuned": the first figure
of a shape), the best webpeft figure of any kernel, PyTorch, and the ratios.
Then the products through frozen weights against webpeft's own f32 figure
at the same shape, and the decoding rows' weight GB/s against the device's
copy bandwidth. A comparison, not a test.

    webpeft bench --kernels --json --no-naive > kernels.json
    python benches/torch_matmul.py kernels.json --device cuda
"""

import argparse
import json
import statistics
import time


def torch_gflops(m: int, n: int, k: int, op: str, device: str, repeats: int) -> float:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn((k, m) if op[0] == "t" else (m, k), generator=g).to(device)
    b = torch.randn((n, k) if op[1] == "t" else (k, n), generator=g).to(device)

    def f():
        return (a.T if op[0] == "t" else a) @ (b.T if op[1] == "t" else b)

    calls = max(1, min(64, int(2e10 / (2 * m * n * k))))
    f()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        sync(device)
        times.append((time.perf_counter() - start) / calls)
    return 2 * m * n * k / statistics.median(times) / 1e9


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def torch_copy_gbps(device: str) -> float:
    import torch

    x = torch.empty(64 << 20, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync(device)
    return 2 * x.numel() * 4 * 10 / (time.perf_counter() - start) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("webpeft_json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with open(args.webpeft_json) as f:
        data = json.load(f)
    figures = data["matmul"]
    print(f"webpeft adapter: {data['adapter']['name']} ({data['adapter']['backend']}, {data['adapter']['device_type']})")

    shapes = {}
    for fig in figures:
        key = (fig["shape"], fig["m"], fig["n"], fig["k"], fig["op"])
        shapes.setdefault(key, []).append(fig)

    print(f"\nf32 products, GFLOP/s (PyTorch {args.device}, fp32, TF32 off)")
    print(f"{'shape':<46} {'webpeft tuned':>14} {'best':>9} {'PyTorch':>9} {'tuned/PT':>9} {'best kernel'}")
    f32_best = {}
    for (shape, m, n, k, op), figs in shapes.items():
        f32 = [f for f in figs if f["kernel"].startswith("f32 ")]
        if not f32:
            continue
        tuned = f32[0]
        best = max(f32, key=lambda f: f["gflops"])
        f32_best[(m, n, k, op)] = tuned["gflops"]
        theirs = torch_gflops(m, n, k, op, args.device, args.repeats)
        print(f"{shape:<46} {tuned['gflops']:>14.0f} {best['gflops']:>9.0f} {theirs:>9.0f} "
              f"{tuned['gflops'] / theirs:>9.3f} {best['kernel']}")

    print("\nproducts through a frozen weight, GFLOP/s, against webpeft's f32 kernel at the same shape")
    print(f"{'shape':<46} {'kernel':<32} {'GFLOP/s':>9} {'× f32':>7} {'weight GB/s':>11}")
    for (shape, m, n, k, op), figs in shapes.items():
        for fig in figs:
            if fig["kernel"].startswith("f32 ") or fig.get("weight_gbps") is None:
                continue
            base = f32_best.get((m, n, k, op))
            if base is None:
                base = next((f["gflops"] for f in figs if f["kernel"] == "f32-weight gemm"), None)
            ratio = f"{fig['gflops'] / base:.2f}" if base else "-"
            print(f"{shape:<46} {fig['kernel']:<32} {fig['gflops']:>9.0f} {ratio:>7} {fig['weight_gbps']:>11.1f}")

    samples = [f for f in figures if f["op"] == "sample"]
    if samples:
        print("\none token drawn from a row of logits, ms a draw with its readback (GPU: the token; CPU: the row)")
        width = max(len(f["shape"]) for f in samples)
        for fig in samples:
            print(f"{fig['shape']:<{width}} {fig['kernel']:<32} {fig['ms_per_call']:>9.3f}")

    copy = data.get("copy_gbps")
    if copy:
        theirs = torch_copy_gbps(args.device) if args.device != "cpu" else None
        line = f"\ndevice copy (read + write): webpeft {copy:.0f} GB/s"
        if theirs:
            line += f", PyTorch {theirs:.0f} GB/s"
        print(line)
        print("decoding rows (M = 1): weight GB/s as a share of webpeft's copy bandwidth")
        for fig in figures:
            if fig["m"] == 1 and fig.get("weight_gbps"):
                print(f"{fig['shape']:<46} {fig['kernel']:<32} {fig['weight_gbps']:>9.1f} {fig['weight_gbps'] / copy:>7.2f}")


if __name__ == "__main__":
    main()
