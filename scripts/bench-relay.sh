#!/usr/bin/env bash
# Relay benchmark: the Switchboard relay and coturn, started side by side in this run on
# loopback with the same settings, measured by the same closed-loop client
# (relay/benches/turn_closed_loop.rs). Prints Markdown tables.
#
#   bash scripts/bench-relay.sh            # full run (~10 min on 2 cores)
#   BENCH_SMOKE=1 bash scripts/bench-relay.sh   # a few seconds: one row per table (CI)
#   BEFORE_RELAY=/path/to/old/relay bash scripts/bench-relay.sh   # adds "before" rows
#   BENCH_CALLGRIND=1 ...                   # instructions per relayed packet under callgrind
#   BENCH_PERF=1 ...                        # where the relay's CPU goes at saturation (perf)
#   BENCH_CLIENTS="8" BENCH_PAYLOADS="1200" # only these rows in the closed-loop tables
#   BENCH_ONLY=open-loop                    # one section: closed-loop, c2c, threads, open-loop,
#                                           # memory, callgrind or perf (with their switch)
#
# Per-core figures come from the servers' own CPU time (/proc/PID/stat, all threads): "µs CPU
# per packet" is server CPU per relayed packet (a round trip relays two; client to client,
# four), "round trips per core-s" is round trips per second of server CPU; "server threads
# % of a core" is the CPU of each busy server thread (/proc/PID/task/*/stat). The client runs
# on the same machine and competes for the same cores, so totals depend on the box; compare
# rows within one run only.
#
# The open-loop section offers a fixed rate (round trips/s, 8 clients, 100 B) for 3 s per step:
# coturn is stepped up until it loses packets, and our relay then runs at twice the highest
# rate coturn relayed without loss (coturn too, for comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=${BENCH_SMOKE:-0}
HOLD=${BENCH_HOLD:-9000}
command -v turnserver >/dev/null || bash scripts/install.sh
# BENCH_NO_BUILD=1 uses target/release/relay and the bench as they are (already built).
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p switchboard-relay
  cargo bench -q -p switchboard-relay --bench turn_closed_loop --no-run
fi
bench() { cargo bench -q -p switchboard-relay --bench turn_closed_loop -- "$@"; }
SECRET=bench-secret-$$
WORK=$(mktemp -d /tmp/switchboard-bench.XXXXXX)
PGIDS=()
stop_servers() {
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${PGIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  PGIDS=()
}
trap 'stop_servers; rm -rf "$WORK"' EXIT
# Holding thousands of allocations needs one relayed socket each.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# start_relay BIN PORT PORTS THREADS [WRAPPER...]: a relay on 127.0.0.1:PORT.
start_relay() {
  local bin=$1 port=$2 ports=$3 threads=$4; shift 4
  local extra=()
  # The relay from before this work has no --threads.
  "$bin" --help | grep -q -- --threads && extra=(--threads "$threads")
  RELAY_SECRET=$SECRET setsid "$@" "$bin" --listen "127.0.0.1:$port" --realm interop \
    --allow-loopback-peers --port-range "$ports" --bandwidth-per-allocation 0 \
    --max-allocations 20000 --max-allocations-per-user 20000 --drain-timeout 0 "${extra[@]}" \
    > "$WORK/relay-$port.log" 2>&1 < /dev/null &
  PGIDS+=($!)
  LAST_PID=$!
  for _ in $(seq 1 100); do grep -q "relay ready" "$WORK/relay-$port.log" && break; sleep 0.1; done
}

# start_coturn PORT MIN MAX THREADS: coturn with THREADS relay threads.
start_coturn() {
  rm -f "$WORK/turnserver-$1.pid"
  setsid turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$1" \
    --use-auth-secret --static-auth-secret="$SECRET" --realm=interop --allow-loopback-peers \
    --no-cli --no-tls --no-dtls --min-port="$2" --max-port="$3" --relay-threads="$4" \
    --pidfile="$WORK/turnserver-$1.pid" --log-file="$WORK/coturn-$1.log" --simple-log \
    --no-stdout-log > /dev/null 2>&1 < /dev/null &
  PGIDS+=($!)
  for _ in $(seq 1 50); do [ -s "$WORK/turnserver-$1.pid" ] && break; sleep 0.1; done
  LAST_PID=$(cat "$WORK/turnserver-$1.pid")
}

header() {
  echo "| server | clients | payload B | round trips/s | lost % | server CPU s | µs CPU per packet | round trips per core-s | RTT p50 µs | RTT p99 µs | RTT max µs | server threads, % of a core |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
}

# section NAME: whether to run it (BENCH_ONLY picks one).
section() { [ -z "${BENCH_ONLY:-}" ] || [ "$BENCH_ONLY" = "$1" ]; }

# row LABEL ADDR PID CLIENTS PAYLOAD [EXTRA...]
row() {
  local label=$1 addr=$2 pid=$3 clients=$4 payload=$5; shift 5
  local total=${BENCH_PACKETS:-200000}
  [ "$SMOKE" = 1 ] && total=4000
  local per=$(( total / clients )); [ "$per" -lt 500 ] && per=500
  bench --server "$addr" --secret "$SECRET" --label "$label" --server-pid "$pid" \
    --clients "$clients" --payload "$payload" --packets "$per" --window 32 \
    --latency-packets "$([ "$SMOKE" = 1 ] && echo 50 || echo 500)" "$@"
}

CLIENTS="1 8 64"; PAYLOADS="100 1200"
[ "$SMOKE" = 1 ] && CLIENTS="8" && PAYLOADS="100"
CLIENTS=${BENCH_CLIENTS:-$CLIENTS}; PAYLOADS=${BENCH_PAYLOADS:-$PAYLOADS}

if section closed-loop || section c2c; then
echo "### One event loop (\`--threads 1\`) vs coturn with one relay thread"
echo
start_relay "$ROOT/target/release/relay" 35478 53000-53999 1; RELAY_PID=$LAST_PID
start_coturn 35479 54000 54999 1; COTURN_PID=$LAST_PID
BEFORE_PID=
if [ -n "${BEFORE_RELAY:-}" ]; then
  start_relay "$BEFORE_RELAY" 35477 55000-55999 1; BEFORE_PID=$LAST_PID
fi
if section closed-loop; then
header
for clients in $CLIENTS; do
  for payload in $PAYLOADS; do
    row switchboard 127.0.0.1:35478 "$RELAY_PID" "$clients" "$payload"
    [ -n "$BEFORE_PID" ] && row "switchboard before" 127.0.0.1:35477 "$BEFORE_PID" "$clients" "$payload"
    row coturn 127.0.0.1:35479 "$COTURN_PID" "$clients" "$payload"
  done
done
for payload in $PAYLOADS; do
  bench --server 127.0.0.1:9 --secret x --label "raw UDP echo (recvmmsg/sendmmsg, no TURN)" \
    --raw-echo --clients 8 --payload "$payload" --packets "$([ "$SMOKE" = 1 ] && echo 500 || echo 25000)" --window 32
done
echo
fi
if section c2c; then
echo "### Client to client: pairs of allocations on the same server (8 pairs)"
echo
header
for payload in $PAYLOADS; do
  row "switchboard (in memory)" 127.0.0.1:35478 "$RELAY_PID" 8 "$payload" --c2c
  [ -n "$BEFORE_PID" ] && row "switchboard before" 127.0.0.1:35477 "$BEFORE_PID" 8 "$payload" --c2c
  row coturn 127.0.0.1:35479 "$COTURN_PID" 8 "$payload" --c2c
done
echo
fi
stop_servers
fi

if section threads; then
echo "### Two event loops (\`--threads 2\`) vs coturn with two relay threads"
echo
start_relay "$ROOT/target/release/relay" 35478 53000-53999 2; RELAY_PID=$LAST_PID
start_coturn 35479 54000 54999 2; COTURN_PID=$LAST_PID
header
for clients in $([ "$SMOKE" = 1 ] && echo 8 || echo "8 64"); do
  for payload in $PAYLOADS; do
    row "switchboard --threads 2" 127.0.0.1:35478 "$RELAY_PID" "$clients" "$payload"
    row "coturn --relay-threads 2" 127.0.0.1:35479 "$COTURN_PID" "$clients" "$payload"
  done
done
stop_servers
echo
fi

if section open-loop; then
# open_row LABEL ADDR PID RATE: one open-loop row (8 clients, 100 B); sets LAST_LOST (packets).
open_row() {
  local line
  line=$(bench --server "$2" --secret "$SECRET" --label "$1" --server-pid "$3" --clients 8 \
    --payload 100 --rate "$4" --seconds "$([ "$SMOKE" = 1 ] && echo 1 || echo 3)")
  echo "$line"
  LAST_LOST=$(echo "$line" | awk -F'|' '{gsub(/ /, "", $8); print $8}')
}
echo "### Fixed offered load: coturn stepped up until it loses, ours at twice its loss-free rate"
echo
start_relay "$ROOT/target/release/relay" 35478 53000-53999 1; RELAY_PID=$LAST_PID
start_coturn 35479 54000 54999 1; COTURN_PID=$LAST_PID
echo "| server | clients | payload B | offered round trips/s | sent/s | echoed/s | lost packets | lost % | server CPU s | µs CPU per packet | round trips per core-s | server threads, % of a core |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
RATES=${BENCH_RATES:-"5000 10000 15000 20000 25000 30000 40000 50000 60000"}
[ "$SMOKE" = 1 ] && RATES="2000"
BEST=0
for rate in $RATES; do
  open_row coturn 127.0.0.1:35479 "$COTURN_PID" "$rate"
  [ "$LAST_LOST" = 0 ] || break
  BEST=$rate
done
if [ "$BEST" -gt 0 ]; then
  open_row switchboard 127.0.0.1:35478 "$RELAY_PID" $(( 2 * BEST ))
  open_row coturn 127.0.0.1:35479 "$COTURN_PID" $(( 2 * BEST ))
fi
echo
echo "coturn's highest loss-free rate in this run: $BEST round trips/s; ours was offered $(( 2 * BEST ))."
stop_servers
echo
fi

if section memory; then
[ "$SMOKE" = 1 ] && HOLD=200
echo "### Resident memory while holding $HOLD idle allocations"
echo
start_relay "$ROOT/target/release/relay" 35478 10000-19999 1; RELAY_PID=$LAST_PID
start_coturn 35479 20000 29999 1; COTURN_PID=$LAST_PID
echo "| server | allocations held | seconds to create | RSS before KiB | RSS after KiB | bytes per allocation |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
bench --server 127.0.0.1:35478 --secret "$SECRET" --label switchboard --hold "$HOLD" --server-pid "$RELAY_PID" --max-seconds 120
bench --server 127.0.0.1:35479 --secret "$SECRET" --label coturn --hold "$HOLD" --server-pid "$COTURN_PID" --max-seconds 120
stop_servers
fi

if [ "${BENCH_CALLGRIND:-0}" = 1 ] && command -v valgrind >/dev/null && section callgrind; then
  # Instructions counted by callgrind in two runs of the same relay, 1000 and 6000 closed-loop
  # round trips (1 client, 100 B, one in flight); the difference divided by the 10,000 relayed
  # packets in between is the cost per packet without start-up and allocation.
  echo
  echo "### Instructions per relayed packet (callgrind, one loop, 1 client, 100 B)"
  echo
  echo "| relay | instructions, 1000 round trips | instructions, 6000 round trips | instructions per relayed packet |"
  echo "| --- | ---: | ---: | ---: |"
  for which in after before; do
    bin=$ROOT/target/release/relay; [ "$which" = before ] && bin=${BEFORE_RELAY:-}
    [ -z "$bin" ] && continue
    counts=()
    for n in 1000 6000; do
      start_relay "$bin" 35476 56000-56099 1 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-$which-$n.out"
      bench --server 127.0.0.1:35476 --secret "$SECRET" --label x --clients 1 --payload 100 \
        --packets "$n" --window 1 --latency-packets 1 --max-seconds 300 > /dev/null
      stop_servers
      counts+=("$(awk '/^summary:/ {print $2; exit}' "$WORK/cg-$which-$n.out")")
    done
    echo "| $which | ${counts[0]} | ${counts[1]} | $(( (counts[1] - counts[0]) / 10000 )) |"
  done
fi

if [ "${BENCH_PERF:-0}" = 1 ] && command -v perf >/dev/null && section perf; then
  # cpu-clock samples (a software event: this VM has no hardware counters) of the relay process,
  # user space and kernel, for 3 s of a closed loop of 8 clients x 100 B that keeps it busy.
  echo
  echo "### Where the relay's CPU goes at saturation (perf, one loop, 8 clients, 100 B)"
  for which in after before; do
    bin=$ROOT/target/release/relay; [ "$which" = before ] && bin=${BEFORE_RELAY:-}
    [ -z "$bin" ] && continue
    start_relay "$bin" 35476 56000-56099 1
    bench --server 127.0.0.1:35476 --secret "$SECRET" --label x --clients 8 --payload 100 \
      --packets 30000 --window 32 --latency-packets 1 --max-seconds 60 > /dev/null &
    BENCH_PID=$!
    sleep 1
    perf record -e cpu-clock -F 999 -g -o "$WORK/perf-$which.data" -p "$LAST_PID" -- sleep 3 \
      > /dev/null 2>&1 || true
    wait "$BENCH_PID" || true
    stop_servers
    echo
    echo "#### $which: symbols with at least 1.5 % of the samples (self time)"
    echo
    echo '```'
    perf report -i "$WORK/perf-$which.data" --stdio --no-children --sort dso,sym -g none \
      --percent-limit 1.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
    echo '```'
  done
fi
