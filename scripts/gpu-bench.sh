#!/usr/bin/env bash
# The performance figures on a lent GPU, in one call of the device tool (its machine has no
# network and no Rust, but has python3 with torch, transformers and peft).
#
# Here, first:  scripts/gpu-bench.sh --prepare
#   builds the release CLI into .gpu/ and downloads the Vulkan loader and the GL
#   vendor-neutral loaders the NVIDIA Vulkan driver needs into .gl/ (both ignored by git).
# There:        run(command: "scripts/gpu-bench.sh", carry: [".gpu", ".gl"], timeout_s: 560)
#   leaves two files in $OUT: log.txt (everything printed, as it ran) and gpu-bench.tar.gz
#   with adapter.txt (nvidia-smi), kernels.json + kernels-vs-torch.txt (webpeft beside PyTorch),
#   train.txt (with the per-kernel profile), train-8x512.txt, peft*.txt (PyTorch + PEFT on CUDA
#   beside webpeft), llama1b.json + llama1b-vs-peft.txt (the 1B step, PyTorch fp32/bf16 beside),
#   sweep.txt (block shapes of the blocked kernel) and train-f16.txt.
# Anywhere else it runs the same steps on the local adapter (OUT defaults to out/gpu-bench);
# QUICK=1 times one repeat of each and skips the sweep, 8×512 (webpeft's and PEFT's) and the 1B
# model (a check of this script); SKIP="sweep llama1b …" leaves out the named steps.
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
    apt-get $o update -qq
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    du -sh .gpu .gl
    exit 0
fi

OUT="${OUT:-out/gpu-bench}"
mkdir -p "$OUT"
WORK=$(mktemp -d)
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

skip() { case " ${SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }
step() { # name, command…: run one figure into $WORK/name.txt, keep going if it fails
    local name=$1
    shift
    skip "$name" && return 0
    echo "== $name: $*"
    local start=$SECONDS
    "$@" > "$WORK/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n 60 "$WORK/$name.txt"
    pack
}
# The archive is rewritten after every step, so a run cut short still returns what it measured.
pack() { tar -czf "$OUT/gpu-bench.tar.gz" -C "$WORK" .; }

repeats=5
naive=(--no-naive)
[ -n "${QUICK:-}" ] && repeats=1 && SKIP="${SKIP:-} sweep train-8x512 llama1b"
device=cpu
python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && device=cuda
nvidia-smi -L 2>/dev/null > "$WORK/adapter.txt"
cat "$WORK/adapter.txt"
# JSON on stdout only: stderr goes to its own file.
if ! skip kernels; then
    echo "== kernels"
    start=$SECONDS
    "$BIN" bench --kernels --json --repeats "$repeats" "${naive[@]}" > "$WORK/kernels.json" 2> "$WORK/kernels.err"
    echo "== kernels: exit $? after $((SECONDS - start)) s"
    cat "$WORK/kernels.err"
    step kernels-vs-torch python3 benches/torch_matmul.py "$WORK/kernels.json" --device "$device"
fi
# The ~30M model folder of benches/peft_compare.py, where python has torch and transformers.
model=/tmp/webpeft-bench-29m
[ -f "$model/config.json" ] || python3 -c "import sys; sys.path.insert(0, 'benches')
from pathlib import Path; from peft_compare import make_model; make_model(Path('$model'))" || true
if [ -f "$model/config.json" ]; then
    step train "$BIN" bench --train --model "$model" --profile --repeats "$repeats"
    step train-8x512 "$BIN" bench --train --model "$model" --batch 8 --seq 512 --repeats 3 --methods lora,seq_bn
    if ! skip peft; then
        # The methods benches/peft_compare.py compares.
        compared=(--methods lora,seq_bn)
        "$BIN" bench --train --model "$model" --json --repeats "$repeats" "${compared[@]}" > "$WORK/train.json" 2> /dev/null
        step peft python3 benches/peft_compare.py "$model" --device "$device" --steps "$repeats" --webpeft-json "$WORK/train.json"
        if ! skip train-8x512; then
            "$BIN" bench --train --model "$model" --json --batch 8 --seq 512 --repeats 3 "${compared[@]}" \
                > "$WORK/train-8x512.json" 2> /dev/null
            step peft-8x512 python3 benches/peft_compare.py "$model" --device "$device" --steps 3 --batch 8 --seq 512 \
                --webpeft-json "$WORK/train-8x512.json"
        fi
    fi
else
    step train "$BIN" bench --train --profile --repeats "$repeats"
fi
if ! skip llama1b; then
    echo "== llama1b"
    start=$SECONDS
    "$BIN" bench --llama-1b --json > "$WORK/llama1b.json" 2> "$WORK/llama1b.err"
    echo "== llama1b: exit $? after $((SECONDS - start)) s"
    tail -n 5 "$WORK/llama1b.err"
    step llama1b-vs-peft python3 benches/peft_compare.py --llama-1b --device "$device" --steps 3 \
        --webpeft-json "$WORK/llama1b.json"
fi
step sweep "$BIN" bench --repeats 3 --sweep-blocks \
    128x128x8/8x8,128x128x16/8x8,128x64x8/8x4,64x128x8/4x8,64x64x8/4x4,64x64x16/4x4,128x64x16/8x8,64x64x16/8x8,32x32x16/4x4,64x128x16/4x8
# The NF4 rows again with f16 arithmetic (shader-f16), against the NF4 rows of train.txt.
[ -f "$model/config.json" ] && step train-f16 "$BIN" bench --train --model "$model" --compute-dtype f16 --repeats "$repeats"
pack
echo "== wrote $OUT/log.txt and $OUT/gpu-bench.tar.gz ($(ls "$WORK" | tr '\n' ' '))"
