#!/usr/bin/env bash
# Room cost per frame: runs the built Worker on `wrangler dev` (storage on a
# normal disk directory, where the output gate waits for a real sync) inside a
# private loopback-only network namespace, drives it with scripts/room-load.mjs
# and prints the load summary plus the server's CPU time per delivered message
# (every process of wrangler's process group, from /proc).
#
#   bash scripts/bench-room-cost.sh [--root DIR] [--persist DIR] -- <room-load.mjs args>
#
# --profile S: also CPU-profile the Worker for S seconds during the load
# (scripts/profile-worker.mjs; printed to stderr).
# ROOM_COST_VARS="--var CHECKPOINT_MS:1000 ...": more Worker variables for the run (tuning).
# --root: the checkout whose build/worker to run (default: this one; used to
# measure an older build side by side). Needs `bash scripts/build-worker.sh` first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ "${SWITCHBOARD_IN_NETNS:-0}" != 1 ]; then
  exec unshare -n env SWITCHBOARD_IN_NETNS=1 bash -c 'ip link set lo up && exec bash "$0" "$@"' "$0" "$@"
fi
ROOT=$HERE
PERSIST=""
PROFILE=0
while [ $# -gt 0 ]; do
  case $1 in
    --profile) PROFILE=$2; shift 2 ;;
    --root) ROOT=$2; shift 2 ;;
    --persist) PERSIST=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
WORK=$(mktemp -d /var/tmp/room-cost.XXXXXX)
PERSIST=${PERSIST:-$WORK/state}
PGID=""
cleanup() {
  if [ -n "$PGID" ]; then kill -TERM -- "-$PGID" 2>/dev/null || true; sleep 0.5; kill -KILL -- "-$PGID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 20000 || true
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false SWITCHBOARD_SKIP_BUILD=1
: > "$WORK/empty.env"
cd "$ROOT"
mkdir -p client/site   # the [assets] directory wrangler.toml names
setsid "$HERE/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 --port 18900 --inspector-port 19900 \
  --persist-to "$PERSIST" --env-file "$WORK/empty.env" --show-interactive-dev-session=false \
  --var RATE_PER_S:1000 --var RATE_BURST:2000 --var ADMIN_TOKEN:bench-admin \
  ${ROOM_COST_VARS:-} > "$WORK/wrangler.log" 2>&1 < /dev/null &
PGID=$!
ready=0
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:18900/healthz > /dev/null && { ready=1; break; }
  sleep 0.5
done
if [ "$ready" != 1 ]; then echo "wrangler dev did not become ready:" >&2; cat "$WORK/wrangler.log" >&2; exit 1; fi
cpu_ticks() { # utime+stime of every process in the group, in clock ticks
  local total=0
  for p in $(pgrep -g "$PGID" || true); do
    if [ -r "/proc/$p/stat" ]; then
      set -- $(sed 's/^.*) //' "/proc/$p/stat")
      total=$((total + ${12} + ${13}))
    fi
  done
  echo "$total"
}
before=$(cpu_ticks)
PROF_PID=""
if [ "$PROFILE" != 0 ]; then
  # Starts once the clients are joining; the load's steady part follows.
  (sleep 12; node "$HERE/scripts/profile-worker.mjs" 19900 "$PROFILE" > "$WORK/profile.txt" 2>&1) &
  PROF_PID=$!
fi
summary=$(node "$HERE/scripts/room-load.mjs" --url http://127.0.0.1:18900 --admin bench-admin "$@")
after=$(cpu_ticks)
if [ -n "$PROF_PID" ]; then wait "$PROF_PID" || true; cat "$WORK/profile.txt" >&2; fi
hz=$(getconf CLK_TCK)
node -e '
const s = JSON.parse(process.argv[1]); const ticks = Number(process.argv[2]); const hz = Number(process.argv[3]);
const cpuMs = ticks * 1000 / hz;
s.server_cpu_ms = Math.round(cpuMs);
s.server_cpu_us_per_msg = s.received ? Math.round(cpuMs * 1000 / s.received) : null;
s.storage_bytes = Number(process.argv[4]);
console.log(JSON.stringify(s));' "$summary" "$((after - before))" "$hz" "$(du -sb "$PERSIST" | cut -f1)"
