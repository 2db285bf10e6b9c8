#!/usr/bin/env bash
# Build the CLI in release mode and print the kernel benchmark for this machine's adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo run --release --features cli -- bench "$@"
