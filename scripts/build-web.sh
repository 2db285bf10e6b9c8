#!/usr/bin/env bash
# Builds the browser package into pkg/: the wasm32 library (release with
# --release, else the test profile), wasm-bindgen's ES module and .d.ts, and
# the npm files (npm/package.json, npm/README.md, the licenses).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --web
profile=debug; flags=()
if [ "${1:-}" = "--release" ]; then profile=release; flags=(--release); fi
cargo build --lib --target wasm32-unknown-unknown "${flags[@]}"
rm -rf pkg && mkdir -p pkg
wasm-bindgen --target web --out-dir pkg --out-name webpeft "target/wasm32-unknown-unknown/$profile/webpeft.wasm"
# wasm-bindgen types its raw wasm exports (InitOutput) with `any`; nothing public is, so say `unknown`.
sed -i 's/\bany\b/unknown/g' pkg/webpeft.d.ts pkg/webpeft_bg.wasm.d.ts
cp npm/package.json npm/README.md LICENSE-MIT LICENSE-APACHE pkg/
echo "build-web: pkg/ ($profile): $(du -h pkg/webpeft_bg.wasm | cut -f1) wasm, $(gzip -c pkg/webpeft_bg.wasm | wc -c) bytes gzipped"
