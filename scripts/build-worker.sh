#!/usr/bin/env bash
# Builds the Worker (Rust -> wasm32 -> build/worker/shim.mjs) with the tools that
# scripts/install.sh put in place, without downloading anything.
# wrangler runs this as its [build] command; concurrent runs are serialized.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SWITCHBOARD_SKIP_BUILD:-0}" = 1 ] && [ -f build/worker/shim.mjs ]; then
  exit 0
fi
export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$HOME/.cargo/bin/wasm-bindgen}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"
mkdir -p target
exec flock target/.worker-build.lock worker-build --release
