#!/usr/bin/env bash
# Runs every fuzz target (or those named after the seconds) for the given number
# of seconds each (default 30) on inputs up to 1 MB, with a 2 GB memory limit and
# a 30 s per-input timeout (generous: a loaded 2-core machine starves the fuzzer;
# every input so far runs in milliseconds). Builds all targets first, then runs the built
# binaries, so editing the sources during a long run does not rebuild mid-way.
# Needs a nightly toolchain and cargo-fuzz (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz
cd fuzz
cargo +nightly fuzz build -O
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(cargo +nightly fuzz list))
for target in "${targets[@]}"; do
    mkdir -p "corpus-local/$target" "artifacts/$target"
    echo "== fuzz $target for ${seconds}s"
    "$bin/$target" "corpus-local/$target" "corpus/$target" -artifact_prefix="artifacts/$target/" \
        -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 2>&1 \
        | grep -E "^(#[0-9]+ *DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)" || true
    if compgen -G "artifacts/$target/crash-*" >/dev/null || compgen -G "artifacts/$target/timeout-*" >/dev/null \
        || compgen -G "artifacts/$target/oom-*" >/dev/null; then
        echo "fuzz: $target found a failing input in fuzz/artifacts/$target"; exit 1
    fi
done
