# Sourced by scripts/bench-signaling.sh, scripts/loadgen-smoke.sh and scripts/stampede.sh: starts
# the servers a signaling benchmark compares, each in its own process group (setsid), and stops
# them by group. Expects ROOT (repository root) and WORK (a scratch directory) to be set.
# Every server listens on 127.0.0.1 only; callers run inside `unshare -n`.

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
SERVER_PGIDS=()
# BENCH_NICE (e.g. -10) runs servers and load at another priority: on a box shared with niced
# builds, a benchmark at nice 0 measures the scheduler's queue more than the servers.
NICE=(nice -n "${BENCH_NICE:-0}")

stop_servers() {
  local g
  for g in "${SERVER_PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${SERVER_PGIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  SERVER_PGIDS=()
}

# stop_server PGID: stops one server group.
stop_server() {
  local g=$1 keep=() x
  kill -TERM -- "-$g" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$g" 2>/dev/null || true
  for x in "${SERVER_PGIDS[@]}"; do [ "$x" = "$g" ] || keep+=("$x"); done
  SERVER_PGIDS=("${keep[@]}")
}

# wait_http NAME URL LOG: waits (bounded, 90 s) until URL answers.
wait_http() {
  local name=$1 url=$2 log=$3
  for _ in $(seq 1 180); do
    curl -s -o /dev/null --max-time 2 "$url" && return 0
    sleep 0.5
  done
  echo "$name did not become ready; its log:" >&2
  tail -n 40 "$log" >&2
  return 1
}

# start_switchboard PORT INSPECTOR_PORT [--var K:V ...]: the Worker (already built) on wrangler dev.
# SWITCHBOARD_DIR (default: this checkout) may name another checkout with a built Worker, e.g. a
# branch to measure against this one. Sets LAST_PGID.
start_switchboard() {
  mkdir -p "${SWITCHBOARD_DIR:-$ROOT}/client/site"   # the [assets] directory must exist
  local port=$1 inspector=$2; shift 2
  : > "$WORK/switchboard-$port.env"
  (cd "${SWITCHBOARD_DIR:-$ROOT}" && SWITCHBOARD_SKIP_BUILD=1 exec "${NICE[@]}" setsid "$ROOT/node_modules/.bin/wrangler" dev --local \
    --ip 127.0.0.1 --port "$port" --inspector-port "$inspector" \
    --persist-to "$WORK/switchboard-$port-state" --env-file "$WORK/switchboard-$port.env" \
    --show-interactive-dev-session=false --log-level warn "$@" \
    > "$WORK/switchboard-$port.log" 2>&1 < /dev/null) &
  LAST_PGID=$!
  SERVER_PGIDS+=("$LAST_PGID")
  wait_http "switchboard" "http://127.0.0.1:$port/healthz" "$WORK/switchboard-$port.log"
}

# start_echo PORT INSPECTOR_PORT: the echo floor (bench/echo-worker, already built) on wrangler dev.
start_echo() {
  local port=$1 inspector=$2; shift 2
  : > "$WORK/echo-$port.env"
  (cd "$ROOT/bench/echo-worker" && SWITCHBOARD_SKIP_BUILD=1 exec "${NICE[@]}" setsid "$ROOT/node_modules/.bin/wrangler" dev \
    --local --ip 127.0.0.1 --port "$port" --inspector-port "$inspector" \
    --persist-to "$WORK/echo-$port-state" --env-file "$WORK/echo-$port.env" \
    --show-interactive-dev-session=false --log-level warn "$@" \
    > "$WORK/echo-$port.log" 2>&1 < /dev/null) &
  LAST_PGID=$!
  SERVER_PGIDS+=("$LAST_PGID")
  wait_http "echo floor" "http://127.0.0.1:$port/healthz" "$WORK/echo-$port.log"
}

# start_peerjs PORT: PeerJS server 1.0.2 (bench/node_modules).
start_peerjs() {
  local port=$1
  "${NICE[@]}" setsid node "$ROOT/bench/node_modules/peer/dist/bin/peerjs.js" --port "$port" --host 127.0.0.1 \
    --concurrent_limit 100000 > "$WORK/peerjs-$port.log" 2>&1 < /dev/null &
  LAST_PGID=$!
  SERVER_PGIDS+=("$LAST_PGID")
  wait_http "peerjs" "http://127.0.0.1:$port/" "$WORK/peerjs-$port.log"
}

# build_servers: the Worker, the echo floor, PeerJS server and loadgen (no-ops when up to date).
build_servers() {
  bash "$ROOT/scripts/build-worker.sh" > "$WORK/build-worker.log" 2>&1 || { cat "$WORK/build-worker.log" >&2; return 1; }
  bash "$ROOT/bench/echo-worker/build.sh" > "$WORK/build-echo.log" 2>&1 || { cat "$WORK/build-echo.log" >&2; return 1; }
  if [ ! -x "$ROOT/bench/node_modules/.bin/peerjs" ]; then
    npm --prefix "$ROOT/bench" ci --no-audit --no-fund --loglevel=error
  fi
  cargo build --release -q -p switchboard-loadgen
}
