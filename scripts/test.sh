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

echo "== native tests"
cargo test --all-targets --features cli

echo "== browser package (wasm32)"
scripts/build-web.sh

echo "== browser tests (Chromium, WebGPU)"
node --test --test-timeout=900000 tests/browser/run.mjs
