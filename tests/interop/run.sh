#!/usr/bin/env bash
# Interop tests of the relay with real WebRTC stacks: headless Chromium and
# aiortc as TURN clients (relay-only) and as clients of the relay SFU (/v1/sessions).
# Everything runs inside a fresh network
# namespace that has only a loopback interface, so no candidate or packet can
# leave 127.0.0.0/8. Needs root (unshare -n); scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RELAY_BIN=${RELAY_BIN:-$ROOT/target/release/relay}
[ -x "$RELAY_BIN" ] || { echo "build the relay first: cargo build --release -p switchboard-relay" >&2; exit 1; }

if [ "${SWITCHBOARD_IN_NETNS:-0}" != 1 ]; then
  exec unshare -n env SWITCHBOARD_IN_NETNS=1 RELAY_BIN="$RELAY_BIN" bash -c 'ip link set lo up && exec bash "$0"' "$0"
fi

export RELAY_SECRET="interop-$RANDOM$RANDOM" RELAY_ADDR=127.0.0.1:3478
WORK=$(mktemp -d /tmp/switchboard-interop.XXXXXX)
setsid "$RELAY_BIN" --listen "$RELAY_ADDR" --realm interop --allow-loopback-peers \
  --metrics-listen 127.0.0.1:9478 --drain-timeout 0 --sfu-listen 127.0.0.1:3479 > "$WORK/relay.log" 2>&1 < /dev/null &
RELAY_PGID=$!
cleanup() { kill -TERM -- "-$RELAY_PGID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:9478/healthz >/dev/null && break; sleep 0.1; done

status=0
node --test tests/interop/chromium_turn.test.mjs || status=1
"$ROOT/.venv/bin/python" tests/interop/aiortc_turn.py || status=1
# The relay's SFU (session endpoint on the metrics listener).
node --test tests/interop/chromium_sfu.test.mjs || status=1
"$ROOT/.venv/bin/python" tests/interop/aiortc_sfu.py || status=1
if [ $status != 0 ]; then echo "--- relay log ---"; tail -n 50 "$WORK/relay.log"; fi
exit $status
