#!/usr/bin/env bash
# Every test webpeft has: installs what it needs, runs the native GPU tests on
# whatever adapter wgpu finds (lavapipe on a machine without a GPU), and
# builds the library for wasm32 so the web build never rots.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

echo "== native tests"
cargo test --all-targets --features cli

echo "== wasm32 build"
cargo build --lib --target wasm32-unknown-unknown
