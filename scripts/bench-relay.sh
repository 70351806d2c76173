#!/usr/bin/env bash
# Relay benchmark: the Switchboard relay and coturn, started side by side in
# this run on loopback with the same settings, measured by the same client
# (relay/benches/turn_closed_loop.rs). Prints Markdown tables; with --write, also replaces
# the relay section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WRITE=0; [ "${1:-}" = --write ] && WRITE=1
HOLD=${BENCH_HOLD:-9000}
command -v turnserver >/dev/null || bash scripts/install.sh
cargo build --release -q -p switchboard-relay
cargo bench -q -p switchboard-relay --bench turn_closed_loop --no-run
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

# start_servers RELAY_PORTS COTURN_MIN COTURN_MAX: our relay on :35478, coturn on :35479.
start_servers() {
  RELAY_SECRET=$SECRET setsid "$ROOT/target/release/relay" --listen 127.0.0.1:35478 --realm interop \
    --allow-loopback-peers --port-range "$1" --metrics-listen 127.0.0.1:35490 \
    --bandwidth-per-allocation 0 --max-allocations 20000 --drain-timeout 0 \
    > "$WORK/relay.log" 2>&1 < /dev/null &
  RELAY_PID=$!
  PGIDS+=("$RELAY_PID")
  rm -f "$WORK/turnserver.pid"
  setsid turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port=35479 \
    --use-auth-secret --static-auth-secret="$SECRET" --realm=interop --allow-loopback-peers \
    --no-cli --no-tls --no-dtls --min-port="$2" --max-port="$3" --pidfile="$WORK/turnserver.pid" \
    --log-file="$WORK/coturn.log" --simple-log --no-stdout-log > /dev/null 2>&1 < /dev/null &
  PGIDS+=($!)
  for _ in $(seq 1 50); do curl -sf http://127.0.0.1:35490/healthz >/dev/null && break; sleep 0.1; done
  for _ in $(seq 1 50); do [ -s "$WORK/turnserver.pid" ] && break; sleep 0.1; done
  COTURN_PID=$(cat "$WORK/turnserver.pid")
}

THROUGHPUT="$WORK/throughput.md"
start_servers 53000-53999 54000 54999
{
  echo "| server | clients | payload B | packets/s | lost % | RTT p50 µs | RTT p99 µs | RTT max µs |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for cfg in "1 100" "1 1200" "8 100" "8 1200"; do
    for srv in "switchboard 127.0.0.1:35478" "coturn 127.0.0.1:35479"; do
      set -- $cfg $srv
      bench --server "$4" --secret "$SECRET" --label "$3" \
        --clients "$1" --payload "$2" --packets 20000 --window 32 --latency-packets 2000
    done
  done
} | tee "$THROUGHPUT"
stop_servers

MEMORY="$WORK/memory.md"
start_servers 10000-19999 20000 29999
{
  echo
  echo "| server | allocations held | seconds to create | RSS before KiB | RSS after KiB | bytes per allocation |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  bench --server 127.0.0.1:35478 --secret "$SECRET" --label switchboard --hold "$HOLD" --server-pid "$RELAY_PID" --max-seconds 120
  bench --server 127.0.0.1:35479 --secret "$SECRET" --label coturn --hold "$HOLD" --server-pid "$COTURN_PID" --max-seconds 120
} | tee "$MEMORY"
stop_servers

if [ "$WRITE" = 1 ]; then
  python3 - "$THROUGHPUT" "$MEMORY" "$HOLD" <<'PY'
import re, sys, datetime, subprocess
def sh(cmd): return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
throughput, memory = open(sys.argv[1]).read().strip(), open(sys.argv[2]).read().strip()
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
section = f"""<!-- relay:begin -->
Measured {datetime.date.today()} on {cpu} ({sh('nproc')} cores), loopback, coturn {sh("dpkg-query -W -f='${Version}' coturn")}.
Command: `bash scripts/bench-relay.sh --write`

{throughput}

Resident memory of each server process while holding {sys.argv[3]} idle allocations
(Allocate only, no permissions or channels; each allocation also costs one relayed UDP socket in the kernel,
which RSS does not include):

{memory}
<!-- relay:end -->"""
path = "docs/BENCHMARKS.md"
doc = open(path).read()
doc = re.sub(r"<!-- relay:begin -->.*<!-- relay:end -->", lambda _: section, doc, flags=re.S)
open(path, "w").write(doc)
PY
  echo "docs/BENCHMARKS.md updated"
fi
