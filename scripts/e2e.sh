#!/usr/bin/env bash
# End-to-end tests: starts two `wrangler dev` instances of the already-built
# Worker on workerd (rooms open; rooms behind JWT), runs tests/ against them,
# and stops them by process group. Called by scripts/test.sh after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
cargo test -p switchboard-tests --no-run
mkdir -p client/site   # the [assets] directory; the demo is built by scripts/test.sh
WORK=$(mktemp -d /tmp/switchboard-test.XXXXXX)
PGIDS=()
cleanup() {
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${PGIDS[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

export SWITCHBOARD_HEARTBEAT_MS=1000
export SWITCHBOARD_RESUME_WINDOW_MS=4000
export SWITCHBOARD_TURN_SECRET=test-turn-secret
export SWITCHBOARD_JWT_SECRET=test-jwt-secret
export SWITCHBOARD_ADMIN_TOKEN=test-admin-token
# The open instance lets browsers on this origin in (tests/cors_and_origin.rs); others get 403.
export SWITCHBOARD_ALLOWED_ORIGIN=https://app.example
export SWITCHBOARD_REGISTRY_SECRET=test-registry-secret
export SWITCHBOARD_RELAY_LEASE_MS=2000
# The open instance hands out relay session endpoints (welcome.sfu; tests/sfu_token.rs). Nothing
# listens there: the tests check the grant and verify the token, they do not open sessions.
export SWITCHBOARD_SFU_URLS=http://127.0.0.1:18790,http://127.0.0.1:18791
export SWITCHBOARD_SKIP_BUILD=1   # built once above; wrangler must not rebuild per instance

# start_worker NAME PORT INSPECTOR_PORT [--var K:V ...]: wrangler dev in its own process group.
start_worker() {
  local name=$1 port=$2 inspector=$3; shift 3
  : > "$WORK/$name.env"   # an explicit, empty env file: a developer's .dev.vars never leaks in
  setsid "$ROOT/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 --port "$port" \
    --inspector-port "$inspector" --persist-to "$WORK/$name-state" --env-file "$WORK/$name.env" \
    --show-interactive-dev-session=false --log-level info \
    --var "HEARTBEAT_MS:$SWITCHBOARD_HEARTBEAT_MS" --var "RESUME_WINDOW_MS:$SWITCHBOARD_RESUME_WINDOW_MS" \
    --var "STUN_URLS:stun:127.0.0.1:3478" \
    --var "TURN_URLS:turn:127.0.0.1:3478?transport=udp,turn:127.0.0.1:3478?transport=tcp" \
    --var "TURN_SECRET:$SWITCHBOARD_TURN_SECRET" --var "ADMIN_TOKEN:$SWITCHBOARD_ADMIN_TOKEN" \
    "$@" > "$WORK/$name.log" 2>&1 < /dev/null &
  PGIDS+=($!)
}
wait_ready() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0
    sleep 0.5
  done
  echo "wrangler dev ($name) did not become ready; its log:" >&2
  cat "$WORK/$name.log" >&2
  return 1
}
start_worker open 18787 19229 --var "ALLOWED_ORIGINS:$SWITCHBOARD_ALLOWED_ORIGIN" \
  --var "SFU_URLS:$SWITCHBOARD_SFU_URLS"
start_worker auth 18788 19230 --var "JWT_SECRET:$SWITCHBOARD_JWT_SECRET"
# The relay registry's own instance: its nodes replace the static ICE URLs, so no
# other test may share it.
start_worker fleet 18789 19231 --var "REGISTRY_SECRET:$SWITCHBOARD_REGISTRY_SECRET" \
  --var "RELAY_LEASE_MS:$SWITCHBOARD_RELAY_LEASE_MS" --var "TRUST_REGION_HEADER:true"
wait_ready open 18787
wait_ready auth 18788
wait_ready fleet 18789
export SWITCHBOARD_URL=http://127.0.0.1:18787 SWITCHBOARD_AUTH_URL=http://127.0.0.1:18788
export SWITCHBOARD_FLEET_URL=http://127.0.0.1:18789
# Relay processes register with the fleet instance (tests/relay_registry.rs).
# (built here unless given: a no-op when up to date, never a stale binary from an older build)
if [ -z "${SWITCHBOARD_RELAY_BIN:-}" ]; then
  cargo build --release -q -p switchboard-relay
  export SWITCHBOARD_RELAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/relay"
fi
if ! cargo test -p switchboard-tests --no-fail-fast "$@"; then
  echo "--- wrangler dev logs (tail) ---" >&2
  tail -n 40 "$WORK/open.log" "$WORK/auth.log" "$WORK/fleet.log" >&2
  exit 1
fi
