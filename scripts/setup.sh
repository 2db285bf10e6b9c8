#!/usr/bin/env bash
# Installs what webpeft's build and tests need on a fresh Debian 12 machine.
# Needs Rust installed through rustup (for the wasm32 target), and root or sudo for apt.
# Always: Mesa's software Vulkan (lavapipe) for the native GPU tests, and the
# wasm32 Rust target. With --web also: Node.js 20 or later and npm, Chromium (headless
# WebGPU on SwiftShader), wasm-bindgen-cli at the exact version of the
# wasm-bindgen crate in Cargo.lock, and playwright-core for the browser tests.
# Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {
    local need=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
    if [ ${#need[@]} -gt 0 ]; then
        echo "setup: installing ${need[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

apt_install mesa-vulkan-drivers libvulkan1

if ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
    echo "setup: adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

if [ "${1:-}" = "--web" ]; then
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    # The browser tests want Node 20 or later (node:test's --test-timeout, playwright-core's
    # engines); Debian 12's own is 18. Then Node 22 comes from the npm registry's `node` package
    # into .tools/node, and scripts/node-path.sh puts it first on PATH.
    if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ] && [ ! -x .tools/node/node_modules/.bin/node ]; then
        echo "setup: Node $(node -v) is older than 20; installing Node 22 from the npm registry into .tools/node"
        npm install --silent --no-audit --no-fund --prefix .tools/node node@22
    fi
    . scripts/node-path.sh
    command -v chromium >/dev/null || apt_install chromium
    want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
    have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
    if [ "$have" != "$want" ]; then
        echo "setup: installing wasm-bindgen-cli $want (a few minutes)"
        cargo install -q wasm-bindgen-cli --version "$want"
    fi
    if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/typescript ]; then
        echo "setup: installing playwright-core and typescript for the browser tests"
        (cd tests/browser && npm install --silent --no-audit --no-fund)
    fi
fi
