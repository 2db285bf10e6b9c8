#!/usr/bin/env bash
# Every test webpeft has: installs what it needs, runs the native GPU tests on
# whatever adapter wgpu finds (lavapipe on a machine without a GPU), builds the
# browser package (wasm32 + wasm-bindgen, the test profile), and runs the
# real-browser tests in headless Chromium with WebGPU (SwiftShader).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --web
. scripts/node-path.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

# On a machine that has not run the suite before, most of its time is Mesa compiling our shaders for lavapipe,
# one core a compile (its disk cache, ~/.cache/mesa_shader_cache, makes a second run many times faster: the quantized
# matmul tests take 368 s cold and 5 s warm). So the GPU test files run in two processes at once, one a core: `lanes A
# B` runs the functions A and B side by side, A's output as it comes (the log never goes quiet for long), B's into a
# file printed whole after it, and fails if either failed.
lanes() {
    local b ra=0 rb=0
    b=$(mktemp)
    "$2" > "$b" 2>&1 &
    local pb=$!
    "$1" &
    local pa=$!
    wait "$pa" || ra=$?
    wait "$pb" || rb=$?
    echo "== ($2, run beside $1)"
    cat "$b"
    rm -f "$b"
    if [ "$ra" -ne 0 ] || [ "$rb" -ne 0 ]; then
        echo "test.sh: a lane failed ($1: exit $ra, $2: exit $rb)"
        return 1
    fi
}
# `--test` flags for the test files named, or (with -v) for every other file under tests/.
tests_flags() {
    local invert=0
    if [ "$1" = "-v" ]; then invert=1; shift; fi
    local f n
    for f in tests/*.rs; do
        n=$(basename "$f" .rs)
        if [[ " $* " == *" $n "* ]]; then [ $invert -eq 0 ] && printf -- '--test\n%s\n' "$n"
        else [ $invert -eq 1 ] && printf -- '--test\n%s\n' "$n"; fi
    done
    return 0
}

echo "== native tests"
cargo test --all-targets --features cli --no-run
# The four slowest files when the shaders are cold (about half the time) beside all the others.
SLOW=(bnb4_kernels low_rank quant f16_compute)
native_slow() { mapfile -t flags < <(tests_flags "${SLOW[@]}"); cargo test --features cli "${flags[@]}"; }
native_rest() { mapfile -t flags < <(tests_flags -v "${SLOW[@]}"); cargo test --features cli --lib --bins --examples "${flags[@]}"; }
lanes native_slow native_rest

# Our shaders normally compile without naga's bounds clamps and loop counters
# (create_shader_module_trusted); once more with them on, the kernel tests
# check that no kernel depends on a clamp to stay in range. The slow files run
# only their tests of ragged edges, tiles and blocks (about 2 minutes in all
# on lavapipe, where the checks stop the tile loops from unrolling); the
# sampler's statistical test (45 s: its rows are the same few logits, the
# bounds are gpu_draws_match_the_reference's odd sizes) stays out.
echo "== kernel tests with shader runtime checks (WEBPEFT_SHADER_CHECKS=1)"
export WEBPEFT_SHADER_CHECKS=1
checked_a() {
    cargo test --features cli --test rmsnorm --test rope --test softmax --test swiglu --test cross_entropy \
        --test adamw --test embedding --test reduce --test sample --test elementwise --test adalora_kernels \
        -- --skip gpu_draws_follow_the_kept_softmax
    cargo test --features cli --test trainable_tokens --test lora_outer --test modules_to_save -- token_row_kernels \
        id_column_kernels gradient_matches
    cargo test --features cli --test matmul -- ragged_edges odd_shapes few_rows blocked_kernel gemv
    cargo test --features cli --test gemv -- every_form
}
checked_b() {
    cargo test --features cli --test low_rank -- every_kernel f16_compute chunked
    cargo test --features cli --test quant -- nf4_matmul q8_0_matmul blocked_and_gemv
    cargo test --features cli --test attention -- tile_edges kv_cache flash_kernels
    cargo test --features cli --test attention_segments --test bnb4_kernels -- segmented_kernels plain_kernel cached_sliding \
        dequantizes chunks
}
lanes checked_a checked_b
unset WEBPEFT_SHADER_CHECKS

# Users' GPUs run the other kernel family (blocked GEMM, GEMV, flash
# attention, the GPU's draw). Every file that checks a PEFT method, a model
# or generation against the reference stack runs again with it as the test
# device's family, with 32-lane subgroups as on NVIDIA and Apple GPUs
# (about 4 minutes; the files that assert which kernel the CPU family picks, or
# plan its memory, stay out, and so do the table of DPO's loss types and
# CPO's, which add nothing to the DPO and ORPO runs' check of the kernels but
# minutes: train_dpo took 84 s in this pass with CPO's, 46 s without).
echo "== PEFT methods, models and generation through the real-GPU kernels at 32 lanes (WEBPEFT_TEST_KERNELS=gpu)"
gpu_family_a() {
    WEBPEFT_TEST_KERNELS=gpu LP_NATIVE_VECTOR_WIDTH=1024 cargo test --features cli --test train_lora --test train_qlora \
        --test lora_inits --test dora --test adalora --test ia3 --test prompt_tuning --test prefix_tuning --test p_tuning \
        --test train_bottleneck --test train_dpo --test train_kto --test packing --test model_forward \
        -- --skip dpo_loss_types_match_trl --skip cpo_matches_trl
}
gpu_family_b() {
    WEBPEFT_TEST_KERNELS=gpu LP_NATIVE_VECTOR_WIDTH=1024 cargo test --features cli --test generate --test merge \
        --test train_state --test bnb_checkpoint --test quantized_checkpoint --test trainable_tokens --test lora_outer \
        --test modules_to_save --test neftune --test preference_eval --test sliding_window --test grpo --test sft_metrics \
        --test rloo --test reward --test classification
}
lanes gpu_family_a gpu_family_b

# lavapipe's subgroups are as wide as its vectors: 8 lanes at its default 256
# bits, 4 at 128, 16 at 512, 32 at 1024 and 64 at 2048 (LLVM splits what the
# CPU lacks). Real GPUs have 16 to 64: 32 on NVIDIA and Apple, 32 or 64 on
# AMD. The kernels that sum over subgroups of any width run again at 4 and 16
# lanes; at 32 and 64 lanes every file with a subgroup kernel runs, so the
# kernels a real GPU picks at its width (the GEMV's whole-row subgroups, no
# 8-lane GEMM) are checked there too (about 2 minutes in all).
echo "== subgroup kernels at 4, 16, 32 and 64 lanes (LP_NATIVE_VECTOR_WIDTH)"
for bits in 128 512; do
    LP_NATIVE_VECTOR_WIDTH=$bits cargo test --features cli --test gemv --test reduce --test low_rank
done
for bits in 1024 2048; do
    LP_NATIVE_VECTOR_WIDTH=$bits cargo test --features cli --test gemv --test reduce --test low_rank --test matmul \
        --test quant --test attention --test attention_segments --test bnb4_kernels --test f16_compute
done
# The output ops in the GEMV's store at NVIDIA's and Apple's width (whole-row subgroups).
LP_NATIVE_VECTOR_WIDTH=1024 cargo test --features cli --test output_op -- the_gemv_does_the_op

echo "== browser package (wasm32)"
scripts/build-web.sh

echo "== browser tests (Chromium, WebGPU)"
node --test --test-concurrency=1 --test-timeout=900000 tests/browser/run.mjs tests/browser/*.test.mjs
