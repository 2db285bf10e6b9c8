#!/usr/bin/env bash
# The main job: builds the browser package (release) and serves the demo page,
# with its built-in toy model and dataset, at http://127.0.0.1:8080/ (or the
# port given). Open it in a browser with WebGPU (recent Chrome or Edge).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-web.sh --release
. scripts/node-path.sh
exec node www/serve.mjs "${1:-8080}"
