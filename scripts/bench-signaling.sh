#!/usr/bin/env bash
# Signaling benchmark, one run side by side: Switchboard (this commit's Worker on wrangler dev,
# driven once by protocol v1 clients and once by v1.1 clients that send `cseq` as the SDK does),
# the echo floor (bench/echo-worker on wrangler dev: one hibernating Durable Object per room that
# only forwards) and PeerJS server 1.0.2, driven by the same loadgen with the same clients, rooms,
# rate and payload. Server CPU and RSS come from /proc of each server's whole process group over
# the send window (wrangler's proxy workerd reported apart from the workerd running the Worker).
# Also a join test: BENCH_JOIN_CLIENTS clients joining Switchboard at 500/s.
#
#   bash scripts/bench-signaling.sh            # prints Markdown tables, writes target/bench-signaling.json
#   bash scripts/bench-signaling.sh --write    # also replaces the signaling section of docs/BENCHMARKS.md
#
# Knobs (environment): BENCH_LOADS="2000x5 2000x1 200x5" (clients x msgs/s per client),
# BENCH_SECS=20 (send window), BENCH_DRAIN=5 (seconds after the window a message may still
# arrive), BENCH_PAYLOAD=200 (probe bytes; ~270-byte frames), BENCH_CONNECT_RATE=200 (joins/s
# before a load row; the join test always joins at 500/s), BENCH_JOIN_CLIENTS=2000,
# BENCH_NICE=0 (priority of servers and loadgen; see bench/servers.sh), BENCH_ROUNDS=1 (each load
# row is run this many times, the servers in turn, so the echo floor and the room are compared
# round by round; the tables show the median and each round's figures; protocol v1 clients, which
# are not the target, run in the first round only), BENCH_VIA=direct (load straight to the workerd
# that runs each Worker; `proxy`: through wrangler's proxy workerd, as a browser reaches it).
# Runs itself inside a fresh network namespace (unshare -n): only loopback exists.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "${SB_IN_NETNS:-0}" != 1 ]; then
  exec env SB_IN_NETNS=1 unshare -n bash -c 'ip link set lo up && exec "$@"' _ bash "$0" "$@"
fi
WRITE=0; [ "${1:-}" = --write ] && WRITE=1
LOADS=${BENCH_LOADS:-"2000x5 2000x1 200x5"}
SECS=${BENCH_SECS:-20}
DRAIN=${BENCH_DRAIN:-5}
PAYLOAD=${BENCH_PAYLOAD:-200}
JOIN_CLIENTS=${BENCH_JOIN_CLIENTS:-2000}
CONNECT_RATE=${BENCH_CONNECT_RATE:-200}
ROUNDS=${BENCH_ROUNDS:-1}
VIA=${BENCH_VIA:-direct}
export PATH="$HOME/.cargo/bin:$PATH"
# Server state (--persist-to) on tmpfs: Durable Object storage here is a local SQLite file per
# object, and this shared box's disk, not the runtime, would set the pace (see docs/BENCHMARKS.md).
WORK=$(mktemp -d "${BENCH_TMP:-/dev/shm}/switchboard-bench-signaling.XXXXXX")
source "$ROOT/bench/servers.sh"
trap 'stop_servers; rm -rf "$WORK"' EXIT
trap 'exit 143' TERM; trap 'exit 130' INT
ulimit -n "$(ulimit -Hn)"

build_servers
LOADGEN="$ROOT/target/release/loadgen"
SB_PORT=28787 ECHO_PORT=28788 PEERJS_PORT=28789
start_switchboard $SB_PORT 29229; SB_PGID=$LAST_PGID
start_echo $ECHO_PORT 29230; ECHO_PGID=$LAST_PGID
start_peerjs $PEERJS_PORT; PEERJS_PGID=$LAST_PGID
# Load goes straight to the workerd that runs each Worker (BENCH_VIA=direct), past wrangler's
# proxy workerd: a `wrangler dev` part with no counterpart in production, which takes about 40 %
# more CPU per message on top of the runtime's own and would share this box's two cores with it.
SB_TARGET=$SB_PORT ECHO_TARGET=$ECHO_PORT
if [ "$VIA" = direct ]; then
  source "$ROOT/bench/inner-port.sh"
  read -r SB_TARGET _ < <(inner_port "$SB_PGID" $SB_PORT) || { echo "no inner workerd port" >&2; exit 1; }
  read -r ECHO_TARGET _ < <(inner_port "$ECHO_PGID" $ECHO_PORT) || { echo "no inner workerd port" >&2; exit 1; }
fi

# wait_idle PGID: until the group uses < 5 % of a core over a second (bounded: 60 s), so one
# run's teardown (leaves, expiries) does not bill the next.
wait_idle() {
  python3 - "$LOADGEN" "$1" <<'PY'
import json, subprocess, sys, time
def cpu():
    out = subprocess.run([sys.argv[1], "--procstat", "--server-pgid", sys.argv[2]], capture_output=True, text=True).stdout
    return sum(p["cpu_ms"] for p in json.loads(out or "[]"))
for _ in range(60):
    a = cpu(); time.sleep(1); b = cpu()
    if b - a < 50: break
PY
}

RESULTS="$ROOT/target/bench-signaling-runs.jsonl"   # kept: one line per run, as it finishes
: > "$RESULTS"
# run LABEL MODE PORT PGID CLIENTS RATE [loadgen args...]; RUN_SECS/RUN_DRAIN override the window.
run() {
  local label=$1 mode=$2 port=$3 pgid=$4 clients=$5 rate=$6; shift 6
  local secs=${RUN_SECS:-$SECS} drain=${RUN_DRAIN:-$DRAIN} connect_rate=${RUN_CONNECT_RATE:-$CONNECT_RATE} connect_timeout=${RUN_CONNECT_TIMEOUT:-30}
  wait_idle "$pgid"
  echo "--- $label: $clients clients x $rate msg/s, ${secs}s" >&2
  "${NICE[@]}" "$LOADGEN" --mode "$mode" --target "127.0.0.1:$port" --clients "$clients" --rate "$rate" \
    --duration "$secs" --drain-secs "$drain" --payload-bytes "$PAYLOAD" --connect-rate "$connect_rate" \
    --connect-timeout "$connect_timeout" \
    --server-pgid "$pgid" --quiet --out "$WORK/run.json" "$@" > /dev/null
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["label"]=sys.argv[2]; d["round"]=int(sys.argv[3]); print(json.dumps(d))' \
    "$WORK/run.json" "$label" "${ROUND:-1}" >> "$RESULTS"
}

for load in $LOADS; do
  clients=${load%x*} rate=${load#*x}
  for ROUND in $(seq 1 "$ROUNDS"); do
    run "echo floor" echo "$ECHO_TARGET" "$ECHO_PGID" "$clients" "$rate"
    if [ "$ROUND" = 1 ]; then run "switchboard v1" v1 "$SB_TARGET" "$SB_PGID" "$clients" "$rate"; fi
    run "switchboard v1.1" v1 "$SB_TARGET" "$SB_PGID" "$clients" "$rate" --cseq
    run "peerjs" peerjs $PEERJS_PORT "$PEERJS_PGID" "$clients" "$rate"
  done
done
ROUND=1
# Join test: every client joins at 500/s (10 s timeout) and holds; none should fail.
for s in "echo floor join|echo|$ECHO_TARGET|$ECHO_PGID" "switchboard join|v1|$SB_TARGET|$SB_PGID" "peerjs join|peerjs|$PEERJS_PORT|$PEERJS_PGID"; do
  IFS='|' read -r label mode port pgid <<< "$s"
  RUN_SECS=1 RUN_DRAIN=0 RUN_CONNECT_RATE=500 RUN_CONNECT_TIMEOUT=10 run "$label" "$mode" "$port" "$pgid" "$JOIN_CLIENTS" 0
done

COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src proto Cargo.toml wrangler.toml || echo "+changes")
BENCH_VIA=$VIA python3 "$ROOT/bench/signaling_report.py" "$RESULTS" "$COMMIT" "$SECS" "$DRAIN" "$ROUNDS" "$ROOT/target/bench-signaling.json" \
  > "$WORK/report.md"
cat "$WORK/report.md"
if [ "$WRITE" = 1 ]; then
  python3 "$ROOT/bench/replace_section.py" "$ROOT/docs/BENCHMARKS.md" signaling "$WORK/report.md"
  echo "docs/BENCHMARKS.md updated" >&2
fi
