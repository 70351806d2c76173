#!/usr/bin/env bash
# Relay benchmark: the Switchboard relay and coturn, started side by side in
# this run on loopback with the same settings, measured by the same client
# (bench/, `turn-bench`). Prints a Markdown table; with --write, also replaces
# the relay section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WRITE=0; [ "${1:-}" = --write ] && WRITE=1
command -v turnserver >/dev/null || bash scripts/install.sh
cargo build --release -q -p switchboard-relay -p switchboard-bench
SECRET=bench-secret-$$
WORK=$(mktemp -d /tmp/switchboard-bench.XXXXXX)
PGIDS=()
cleanup() {
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

RELAY_SECRET=$SECRET setsid "$ROOT/target/release/relay" --listen 127.0.0.1:35478 --realm bench \
  --allow-loopback-peers --port-range 53000-53999 --metrics-listen 127.0.0.1:35490 \
  --bandwidth-per-allocation 0 \
  > "$WORK/relay.log" 2>&1 < /dev/null &
PGIDS+=($!)
setsid turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port=35479 \
  --use-auth-secret --static-auth-secret="$SECRET" --realm=bench --allow-loopback-peers \
  --no-cli --no-tls --no-dtls --min-port=54000 --max-port=54999 --pidfile="$WORK/turnserver.pid" \
  --log-file="$WORK/coturn.log" --simple-log --no-stdout-log > /dev/null 2>&1 < /dev/null &
PGIDS+=($!)
for port in 35490; do
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
done
sleep 0.5   # coturn has no health endpoint; its first answer is also retried by turn-bench

TABLE="$WORK/table.md"
{
  echo "| server | clients | payload B | packets/s | lost % | RTT p50 µs | RTT p99 µs | RTT max µs |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for cfg in "1 100" "1 1200" "8 100" "8 1200"; do
    set -- $cfg
    for srv in "switchboard 127.0.0.1:35478" "coturn 127.0.0.1:35479"; do
      set -- $cfg $srv
      "$ROOT/target/release/turn-bench" --server "$4" --secret "$SECRET" --label "$3" \
        --clients "$1" --payload "$2" --packets 20000 --window 32 --latency-packets 2000
    done
  done
} | tee "$TABLE"

if [ "$WRITE" = 1 ]; then
  python3 - "$TABLE" <<'PY'
import re, sys, datetime, subprocess
table = open(sys.argv[1]).read().strip()
cpu = subprocess.run("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2", shell=True, capture_output=True, text=True).stdout.strip()
coturn = subprocess.run("dpkg-query -W -f='${Version}' coturn", shell=True, capture_output=True, text=True).stdout.strip()
section = f"""<!-- relay:begin -->
Measured {datetime.date.today()} on {cpu} ({subprocess.run('nproc', capture_output=True, text=True).stdout.strip()} cores), loopback, coturn {coturn}.
Command: `bash scripts/bench-relay.sh --write`

{table}
<!-- relay:end -->"""
path = "docs/BENCHMARKS.md"
doc = open(path).read()
doc = re.sub(r"<!-- relay:begin -->.*<!-- relay:end -->", lambda _: section, doc, flags=re.S)
open(path, "w").write(doc)
PY
  echo "docs/BENCHMARKS.md updated"
fi
