#!/usr/bin/env bash
# CI smoke of loadgen against the Worker on wrangler dev (already built): a few seconds of load,
# asserting correctness only (`loadgen --check`: every client joined, every message delivered
# exactly once, no error frame, no sequence gap, every forced drop resumed). No speed criteria:
# speed is measured by scripts/bench-signaling.sh. Runs in its own network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "${SB_IN_NETNS:-0}" != 1 ]; then
  exec env SB_IN_NETNS=1 unshare -n bash -c 'ip link set lo up && exec "$@"' _ bash "$0" "$@"
fi
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q -p switchboard-loadgen
LOADGEN="$ROOT/target/debug/loadgen"
# Server state (--persist-to) on tmpfs: Durable Object storage here is a local SQLite file per
# object, and this shared box's disk, not the runtime, would set the pace (see docs/BENCHMARKS.md).
WORK=$(mktemp -d "${BENCH_TMP:-/dev/shm}/switchboard-loadgen-smoke.XXXXXX")
source "$ROOT/bench/servers.sh"
trap 'stop_servers; rm -rf "$WORK"' EXIT
trap 'exit 143' TERM; trap 'exit 130' INT
start_switchboard 28887 29329 --var HEARTBEAT_MS:1000 --var RESUME_WINDOW_MS:15000
lg() { "$LOADGEN" --target 127.0.0.1:28887 --quiet --check --deadline 60 "$@" > "$WORK/summary.json" \
  || { cat "$WORK/summary.json" >&2; return 1; }; }

echo "signal in two-peer rooms, every client dropping its connection and resuming" >&2
lg --clients 60 --rooms 30 --rate 5 --duration 4 --drop-every 1.5
echo "the same with protocol v1.1 senders (cseq, acks from memory, outbox resent after resume)" >&2
lg --clients 60 --rooms 30 --rate 5 --duration 4 --drop-every 1.5 --cseq
echo "broadcast in rooms of five" >&2
lg --clients 40 --rooms 8 --pattern broadcast --rate 2 --duration 3
