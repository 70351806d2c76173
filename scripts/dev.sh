#!/usr/bin/env bash
# Runs Switchboard locally: the Worker on workerd through `wrangler dev`
# (http://127.0.0.1:8787, demo page at /), and one relay node (STUN/TURN on
# 127.0.0.1:3478 UDP+TCP, metrics on 127.0.0.1:9478, its SFU on 127.0.0.1:3479
# with sessions at http://127.0.0.1:3480/v1/sessions, the Worker's SFU_URLS)
# sharing a development TURN secret with the Worker. Installs what it needs first. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/install.sh
export PATH="$HOME/.cargo/bin:$PATH"
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false

# Local secrets, shared by the Worker (.dev.vars) and the relay. Created once;
# edit .dev.vars to change them (it is git-ignored).
if [ ! -f .dev.vars ]; then
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  cat > .dev.vars <<VARS
TURN_SECRET=$secret
STUN_URLS=stun:127.0.0.1:3478
TURN_URLS=turn:127.0.0.1:3478?transport=udp,turn:127.0.0.1:3478?transport=tcp
ADMIN_TOKEN=dev-admin-token
VARS
  echo "wrote .dev.vars (local TURN secret and ICE URLs)"
fi
TURN_SECRET=$(sed -n 's/^TURN_SECRET=//p' .dev.vars)

if [ -f client/package.json ]; then
  npm --prefix client ci --no-audit --no-fund --loglevel=error
  npm --prefix client run build
fi
mkdir -p client/site
cargo build --release -p switchboard-relay

RELAY_PGID=""
cleanup() { [ -n "$RELAY_PGID" ] && kill -TERM -- "-$RELAY_PGID" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
RELAY_SECRET="$TURN_SECRET" setsid "$ROOT/target/release/relay" \
  --listen 127.0.0.1:3478 --realm switchboard --allow-loopback-peers \
  --metrics-listen 127.0.0.1:9478 --drain-timeout 0 \
  --sfu-listen 127.0.0.1:3479 --sfu-http-listen 127.0.0.1:3480 &
RELAY_PGID=$!
echo "relay: STUN/TURN on 127.0.0.1:3478 (udp+tcp), metrics on http://127.0.0.1:9478/metrics"
echo "relay: SFU on 127.0.0.1:3479 (udp+tcp), sessions at http://127.0.0.1:3480/v1/sessions"
echo "worker: http://127.0.0.1:8787  (demo: open http://127.0.0.1:8787/?room=lobby in two tabs)"
"$ROOT/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 --port 8787 --var SFU_URLS:http://127.0.0.1:3480
