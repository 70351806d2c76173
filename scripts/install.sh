#!/usr/bin/env bash
# Installs everything Switchboard needs to build, run and test, from package
# registries only (Debian, crates.io, npm, PyPI). Idempotent: each step checks
# first and does nothing when its tool is already at the right version.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Debian packages: Chromium for browser tests, coturn as TURN reference client/baseline.
APT_PACKAGES=(chromium coturn openssl curl ca-certificates pkg-config util-linux iproute2 python3-venv iptables)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "Rust (rustup) is required: https://rustup.rs" >&2; exit 1; }
command -v node >/dev/null || { echo "Node.js 20+ is required" >&2; exit 1; }

rustup target list --installed | grep -qx wasm32-unknown-unknown || {
  say "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
}
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

# worker-build turns the crate into build/worker/shim.mjs.
WORKER_BUILD_VERSION=0.8.7
# It prints its bare version ("0.8.7"); other tools print "name version".
if [ "$(worker-build --version 2>/dev/null | awk '{print $NF}')" != "$WORKER_BUILD_VERSION" ]; then
  say "cargo install worker-build $WORKER_BUILD_VERSION"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked --force
fi

# The wasm-bindgen CLI must equal the library version in Cargo.lock exactly.
WBG_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WBG_VERSION" ]; then
  say "cargo install wasm-bindgen-cli $WBG_VERSION"
  # Not --locked: one of its locked dependencies is no longer on the registry.
  cargo install wasm-bindgen-cli --version "$WBG_VERSION" --force
fi

# cargo-fuzz runs the parsers' fuzz targets (libFuzzer) in CI.
CARGO_FUZZ_VERSION=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  say "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# wrangler (workerd), esbuild and binaryen, pinned by package-lock.json.
if [ ! -x node_modules/.bin/wrangler ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi

# aiortc, a second WebRTC stack for the relay's interop tests, in a venv.
AIORTC_VERSION=1.16.0
if [ ! -x .venv/bin/python ]; then
  say "python3 -m venv .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import aiortc, sys; sys.exit(aiortc.__version__ != '$AIORTC_VERSION')" 2>/dev/null; then
  say "pip install aiortc==$AIORTC_VERSION"
  .venv/bin/pip install -q "aiortc==$AIORTC_VERSION"
fi
