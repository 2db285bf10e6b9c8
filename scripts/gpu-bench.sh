#!/usr/bin/env bash
# The performance figures on a lent GPU, in one call of the device tool (its machine has no
# network and no Rust, but has python3 with torch, transformers and peft).
#
# Here, first:  scripts/gpu-bench.sh --prepare
#   builds the release CLI into .gpu/ and downloads the Vulkan loader packages into .gl/
#   (both ignored by git; together about 20 MB).
# There:        run(command: "scripts/gpu-bench.sh", carry: [".gpu", ".gl"], timeout_s: 560)
#   writes into $OUT: adapter.txt, kernels.txt, train.txt (with the per-kernel profile),
#   peft.txt (PyTorch + PEFT on CUDA beside webpeft), llama1b.txt and log.txt.
# Anywhere else it runs the same steps on the local adapter (OUT defaults to out/gpu-bench);
# QUICK=1 times one repeat of each and skips the 1B model (a check of this script).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    cargo build --release --features cli
    mkdir -p .gpu .gl
    cp target/release/webpeft .gpu/
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    # shellcheck disable=SC2086
    apt-get $o update -qq && (cd .gl && apt-get $o download libvulkan1)
    du -sh .gpu .gl
    exit 0
fi

OUT="${OUT:-out/gpu-bench}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
BIN=.gpu/webpeft
[ -x "$BIN" ] || BIN=target/release/webpeft
if [ -d .gl ] && ls .gl/*.deb > /dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

step() { # name, command…: run one figure, keep going if it fails
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" > "$OUT/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n 40 "$OUT/$name.txt"
}

repeats=5
naive=()
[ -n "${QUICK:-}" ] && repeats=1 && naive=(--no-naive)
step kernels "$BIN" bench --kernels --repeats "$repeats" "${naive[@]}"
# The ~30M model folder of benches/peft_compare.py, where python has torch and transformers.
model=/tmp/webpeft-bench-29m
[ -f "$model/config.json" ] || python3 -c "import sys; sys.path.insert(0, 'benches')
from pathlib import Path; from peft_compare import make_model; make_model(Path('$model'))" || true
if [ -f "$model/config.json" ]; then
    step train "$BIN" bench --train --model "$model" --profile --repeats "$repeats"
    # The NF4 rows again with f16 arithmetic (shader-f16), against the NF4 rows above.
    step train-f16 "$BIN" bench --train --model "$model" --compute-dtype f16 --repeats "$repeats"
    "$BIN" bench --train --model "$model" --json --repeats "$repeats" > "$OUT/train.json" 2> /dev/null
    device=cpu
    python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && device=cuda
    step peft python3 benches/peft_compare.py "$model" --device "$device" --steps "$repeats" --webpeft-json "$OUT/train.json"
else
    step train "$BIN" bench --train --profile --repeats "$repeats"
fi
[ -n "${QUICK:-}" ] || step llama1b "$BIN" bench --llama-1b
