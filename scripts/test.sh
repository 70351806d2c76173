#!/usr/bin/env bash
# Runs every Switchboard test: lint, unit tests of the sans-IO cores, the wasm
# build, and end-to-end tests against the Worker running on workerd through
# `wrangler dev`. Installs what it needs first (scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/install.sh
export PATH="$HOME/.cargo/bin:$PATH"
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
export CARGO_TERM_COLOR=never
# One clean build per run: incremental caches would double target/ on a CI disk.
export CARGO_INCREMENTAL=0

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace lints, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings
# The relay without its default features (SFU, OTLP), as the fuzz targets build it.
cargo clippy -p switchboard-relay --no-default-features --all-targets -- -D warnings
cargo clippy -p switchboard --target wasm32-unknown-unknown -- -D warnings

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q

step "wasm release build of the Worker"
bash scripts/build-worker.sh

if [ -f client/package.json ]; then
  step "client SDK: build and unit tests"
  npm --prefix client ci --no-audit --no-fund --loglevel=error
  npm --prefix client run build
  npm --prefix client test
fi
mkdir -p client/site

step "unit and integration tests (no Worker needed)"
cargo test --workspace --exclude switchboard-tests

step "relay interop: headless Chromium and aiortc through our TURN server and SFU"
cargo build --release -p switchboard-relay
bash tests/interop/run.sh

step "relay dashboard: every query of docs/grafana-relay.json against a real Prometheus scrape"
bash tests/dashboard/run.sh
step "relay benchmark, smoke size (our relay and coturn side by side; full run: scripts/bench-relay.sh)"
BENCH_SMOKE=1 unshare -n bash -c 'ip link set lo up && exec bash scripts/bench-relay.sh'

step "relay SFU benchmark, smoke size (DataChannel and media through the SFU next to direct str0m; full run: cargo bench -p switchboard-relay --bench sfu_forwarding)"
SFU_BENCH_SMOKE=1 unshare -n bash -c 'ip link set lo up && exec cargo bench -p switchboard-relay --bench sfu_forwarding'

step "fuzz: a short run of each parser (libFuzzer)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"

step "end-to-end tests against wrangler dev"
bash scripts/e2e.sh

step "relay fleet benchmark, smoke size (kill -9 → relays-changed, heartbeats, spread; full run: scripts/bench-fleet.sh)"
BENCH_KILLS=2 BENCH_HB_NODES=20 BENCH_HB_SECS=2 BENCH_CLIENTS=100 BENCH_BURST=20 bash scripts/bench-fleet.sh

step "loadgen smoke against wrangler dev (correctness only: all joined, all delivered once, no errors)"
bash scripts/loadgen-smoke.sh

step "no reconnect stampede: 500 loadgen clients drained at once resume spread over the window"
bash scripts/stampede-test.sh

if [ -f tests/browser/run.sh ]; then
  step "browser end-to-end tests (headless Chromium)"
  SWITCHBOARD_RELAY_BIN="$PWD/target/release/relay" bash tests/browser/run.sh
fi

step "disk used by this run's build outputs"
du -sh target fuzz/target 2>/dev/null || true
df -h . | tail -1
