#!/usr/bin/env bash
# Builds the echo floor to build/worker/shim.mjs with the tools scripts/install.sh put in place
# (the same recipe as scripts/build-worker.sh), sharing the repository's target directory.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
if [ "${SWITCHBOARD_SKIP_BUILD:-0}" = 1 ] && [ -f build/worker/shim.mjs ]; then
  exit 0
fi
export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$HOME/.cargo/bin/wasm-bindgen}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$ROOT/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$ROOT/node_modules/.bin/esbuild}"
export CARGO_TARGET_DIR="$ROOT/target"
mkdir -p "$ROOT/target"
exec flock "$ROOT/target/.echo-worker-build.lock" worker-build --release
