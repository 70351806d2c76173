#!/usr/bin/env bash
# The relay fleet benchmark: time from kill -9 of a room's pinned relay node to the room's
# `relays-changed` push (median and worst of BENCH_KILLS kills, real relay processes, the
# default lease and heartbeat interval), signed heartbeats/s one Registry object absorbs (sent
# straight to the workerd that runs the Worker, next to GET /healthz there in the same run, and
# the same through wrangler's proxy), and how BENCH_CLIENTS clients spread over 3 nodes of
# unequal load (next to the split in proportion to free capacity), plus a burst of new rooms
# between two heartbeats.
# Details in scripts/bench-fleet.mjs; results in docs/BENCHMARKS.md ("The relay fleet").
#
#   bash scripts/bench-fleet.sh
#
# Knobs (environment): BENCH_KILLS=10, BENCH_HB_NODES=200, BENCH_HB_CONCURRENCY=16,
# BENCH_HB_SECS=10, BENCH_CLIENTS=1000, BENCH_SPREAD_RATE=100 (clients/s), BENCH_BURST=100
# (rooms), BENCH_ONLY=failover|heartbeats|spread (one part), BENCH_PROFILE=SECONDS (a CPU profile
# of the Worker during the heartbeat run, to stderr). The lease and the heartbeat
# interval are the defaults (RELAY_LEASE_MS 5 s, --heartbeat-interval 2 s). Needs the Worker built (scripts/build-worker.sh) and the
# release relay (cargo build --release -p switchboard-relay).
# Runs itself inside a fresh network namespace (unshare -n): only loopback exists.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "${SB_IN_NETNS:-0}" != 1 ]; then
  exec env SB_IN_NETNS=1 unshare -n bash -c 'ip link set lo up && exec "$@"' _ bash "$0" "$@"
fi
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false SWITCHBOARD_SKIP_BUILD=1
RELAY_BIN=${SWITCHBOARD_RELAY_BIN:-$ROOT/target/release/relay}
[ -x "$RELAY_BIN" ] || { echo "no relay binary at $RELAY_BIN: cargo build --release -p switchboard-relay" >&2; exit 2; }
[ -e build/worker/shim.mjs ] || { echo "no Worker build: bash scripts/build-worker.sh" >&2; exit 2; }
# State on tmpfs: the local SQLite files of the Durable Objects would otherwise wait on this
# shared disk (see docs/BENCHMARKS.md).
WORK=$(mktemp -d "${BENCH_TMP:-/dev/shm}/switchboard-bench-fleet.XXXXXX")
PGID=""
cleanup() {
  local rc=$?
  # A failed run shows the Worker's log: the Registry's and rooms' structured lines.
  [ "$rc" = 0 ] || tail -n 60 "$WORK/wrangler.log" >&2 || true
  if [ -n "$PGID" ]; then
    kill -TERM -- "-$PGID" 2>/dev/null || true
    sleep 0.5
    kill -KILL -- "-$PGID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

export REGISTRY_SECRET=bench-registry-secret ADMIN_TOKEN=bench-admin TURN_SECRET=bench-turn-secret
: > "$WORK/empty.env"
setsid "$ROOT/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 --port 18950 \
  --inspector-port 19950 --persist-to "$WORK/state" --env-file "$WORK/empty.env" \
  --show-interactive-dev-session=false --log-level "${BENCH_LOG_LEVEL:-warn}" \
  --var "REGISTRY_SECRET:$REGISTRY_SECRET" --var "ADMIN_TOKEN:$ADMIN_TOKEN" --var "TURN_SECRET:$TURN_SECRET" \
  --var TRUST_REGION_HEADER:true \
  > "$WORK/wrangler.log" 2>&1 < /dev/null &
PGID=$!
for _ in $(seq 1 180); do
  curl -sf http://127.0.0.1:18950/healthz > /dev/null && break
  sleep 0.5
done
curl -sf http://127.0.0.1:18950/healthz > /dev/null || { cat "$WORK/wrangler.log" >&2; exit 1; }

# Heartbeats/s are measured at the workerd that runs the Worker, without wrangler's proxy
# workerd in the way (inner_port: bench/inner-port.sh).
source "$ROOT/bench/inner-port.sh"
read -r INNER INNER_PID < <(inner_port "$PGID" 18950) || { echo "no inner workerd port" >&2; exit 1; }

ROOT=$ROOT WORKER_URL=http://127.0.0.1:18950 INNER_URL=http://127.0.0.1:$INNER INNER_PID=$INNER_PID RELAY_BIN=$RELAY_BIN \
  KILLS=${BENCH_KILLS:-10} HB_NODES=${BENCH_HB_NODES:-200} HB_CONCURRENCY=${BENCH_HB_CONCURRENCY:-16} \
  HB_SECS=${BENCH_HB_SECS:-10} CLIENTS=${BENCH_CLIENTS:-1000} SPREAD_RATE=${BENCH_SPREAD_RATE:-100} \
  BURST=${BENCH_BURST:-100} ONLY=${BENCH_ONLY:-} PROFILE=${BENCH_PROFILE:-0} INSPECTOR_PORT=19950 \
  node scripts/bench-fleet.mjs
