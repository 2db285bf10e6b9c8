"""Writes the demo page's built-in default model and dataset (committed; the page and the browser tests
use them, nothing downloads anything).

- www/default-model/: a toy LlamaForCausalLM (random weights, seed 7; hidden 128, 2 layers, 4 heads, 2 kv heads,
  intermediate 256, vocab 384, 256 positions), f32 safetensors, written by transformers' save_pretrained, with the
  byte-level BPE tokenizer of tests/fixtures/tokenizer (it has a chat template). About 1.6 MB.
- www/default-data.jsonl: short {"text": ...} lines in one recognisable style, so a few LoRA steps visibly move
  the toy's output towards it.

Run: /work/pyenv/bin/python www/make_default_model.py   (transformers 4.57, torch; see tests/fixtures/requirements.txt)
"""
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
OUT = HERE / "default-model"
TOK = HERE.parent / "tests" / "fixtures" / "tokenizer"

LINES = [
    "The little robot watered the garden every morning before the sun came up.",
    "The little robot counted the tomatoes and wrote the number on a small green card.",
    "The little robot swept the path and sang a quiet song about the rain.",
    "The little robot fixed the gate, then sat by the pond to watch the ducks.",
    "The little robot planted seven seeds in a straight row and gave each one a name.",
    "The little robot carried water from the well in a blue bucket.",
    "The little robot picked the ripe beans and left the small ones to grow.",
    "The little robot told the bees a story, and the bees hummed along.",
    "The little robot painted the fence white and waved to the neighbours.",
    "The little robot found a lost kitten under the bench and brought it milk.",
    "The little robot wound the old clock in the garden shed at noon.",
    "The little robot raked the leaves into a pile and jumped right in.",
    "The little robot checked the weather and covered the roses before the frost.",
    "The little robot built a tiny house for the birds above the apple tree.",
    "The little robot wrote a letter to the moon and left it on the roof.",
    "The little robot cleaned its wheels and rolled home along the garden path.",
]


def main():
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=384, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=381, eos_token_id=382, pad_token_id=383)
    model = LlamaForCausalLM(config).eval()
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOK / name, OUT / name)
    (OUT / "README.md").write_text(
        "A toy model for the webpeft demo: random weights (seed 7), 2 layers, hidden 128, the byte-level BPE "
        "tokenizer of tests/fixtures/tokenizer. It exists to show the pipeline, not to write well.\n")
    with open(HERE / "default-data.jsonl", "w", encoding="utf-8") as f:
        for line in LINES:
            f.write(json.dumps({"text": line}) + "\n")
    print(sum(p.stat().st_size for p in OUT.iterdir()), "bytes in", OUT)


if __name__ == "__main__":
    main()
