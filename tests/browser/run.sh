#!/usr/bin/env bash
# Browser tests: headless Debian Chromium (playwright-core) drives the demo page
# served by `wrangler dev`, inside a fresh loopback-only network namespace so
# ICE only ever sees 127.0.0.1 and nothing can leave the machine.
#
# Needs, already built: build/worker/shim.mjs (bash scripts/build-worker.sh)
# and client/site (npm --prefix client run build); client/node_modules installed.
# Usage: tests/browser/run.sh [test files...]   (default: tests/browser/*.test.mjs)
# The tests that need TURN run the relay from SWITCHBOARD_RELAY_BIN or
# target/{release,debug}/relay and fail when there is none. Tests that inject
# network faults (iptables, sysctl) rely on this namespace (SWITCHBOARD_IN_NETNS=1)
# and refuse to run outside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

if [ "${SWITCHBOARD_IN_NETNS:-0}" != 1 ]; then
  exec unshare -n bash -c 'ip link set lo up && SWITCHBOARD_IN_NETNS=1 exec "$@"' _ "$0" "$@"
fi

for need in build/worker/shim.mjs client/site/index.html client/node_modules/playwright-core/package.json; do
  if [ ! -e "$need" ]; then
    echo "missing $need: run bash scripts/build-worker.sh and (cd client && npm ci && npm run build) first" >&2
    exit 2
  fi
done

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false SWITCHBOARD_SKIP_BUILD=1
WORK=$(mktemp -d /tmp/switchboard-browser.XXXXXX)
PGID=""
cleanup() {
  if [ -n "$PGID" ]; then
    kill -TERM -- "-$PGID" 2>/dev/null || true
    sleep 0.5
    kill -KILL -- "-$PGID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# One shared Worker for the tests that do not restart it (rooms are unique per test).
# The reconnect and ladder tests start their own instances through harness.mjs.
: > "$WORK/empty.env"
setsid "$ROOT/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 --port 18800 \
  --inspector-port 19800 --persist-to "$WORK/state" --env-file "$WORK/empty.env" \
  --show-interactive-dev-session=false --log-level info \
  --var HEARTBEAT_MS:1000 --var RESUME_WINDOW_MS:60000 \
  --var STUN_URLS:stun:127.0.0.1:3478 --var "TURN_URLS:turn:127.0.0.1:3478?transport=udp" \
  --var TURN_SECRET:browser-test-turn-secret \
  > "$WORK/wrangler.log" 2>&1 < /dev/null &
PGID=$!
for _ in $(seq 1 180); do
  curl -sf http://127.0.0.1:18800/healthz > /dev/null && break
  sleep 0.5
done
if ! curl -sf http://127.0.0.1:18800/healthz > /dev/null; then
  echo "wrangler dev did not become ready; its log:" >&2
  cat "$WORK/wrangler.log" >&2
  exit 1
fi
export SWITCHBOARD_URL=http://127.0.0.1:18800

if [ "$#" -gt 0 ]; then
  FILES=("$@")
else
  FILES=(tests/browser/*.test.mjs)
fi
# One file at a time: each drives two Chromium pages with video on a shared 2-core box.
if ! node --test --test-concurrency=1 "${FILES[@]}"; then
  echo "--- shared wrangler dev log (tail) ---" >&2
  tail -n 40 "$WORK/wrangler.log" >&2
  exit 1
fi
