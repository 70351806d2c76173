#!/usr/bin/env bash
# Scaling curve: WebSocket connections held on one workerd (wrangler dev), step by step, with the
# runtime's resident memory per idle connection and the p99 of a light probe load at each step.
# Clients connect straight to the workerd that runs the Worker (not through wrangler's proxy
# workerd, which would hold a second descriptor per connection and halve what the 20,000-fd
# limit allows), spread over several loadgen processes (<= 5,000 clients each) and over source
# addresses in 127.0.0.0/8. Each step starts a fresh wrangler dev, so a step's memory is not
# left over from the previous one.
#
# Layouts: Switchboard in rooms of 10; the echo floor in rooms of 10; Switchboard in one large
# room (MAX_PEERS and PRESENCE_MAX_PEERS raised with --var), every client with presence;
# Switchboard in one large room with every client joined with `presence=off` (`large-quiet`: no
# presence is sent to them, so a join costs no frame per member); the echo floor in one large
# room (memory only: a broadcast to every socket of a large room is not a light probe).
#
#   bash scripts/bench-scaling.sh          # writes target/bench-scaling.json and docs/scaling.png
#
# Knobs: SCALE_STEPS="1000 5000 10000 15000 19000", SCALE_LARGE_STEPS="250 500 1000 2000",
# SCALE_ECHO_LARGE_STEPS="5000 19000", SCALE_QUIET_STEPS (default: SCALE_STEPS), SCALE_CONNECT_RATE=300 (joins/s, all
# processes together), SCALE_PROBE_PER_S=1000 (probe deliveries/s in total), SCALE_PROBE_SECS=10,
# SCALE_LAYOUTS="rooms echo-rooms large large-quiet echo-large", BENCH_NICE=0 (see bench/servers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "${SB_IN_NETNS:-0}" != 1 ]; then
  exec env SB_IN_NETNS=1 unshare -n bash -c 'ip link set lo up && exec "$@"' _ bash "$0" "$@"
fi
STEPS=${SCALE_STEPS:-"1000 5000 10000 15000 19000"}
LARGE_STEPS=${SCALE_LARGE_STEPS:-"250 500 1000 2000"}
ECHO_LARGE_STEPS=${SCALE_ECHO_LARGE_STEPS:-"5000 19000"}
QUIET_STEPS=${SCALE_QUIET_STEPS:-$STEPS}
CONNECT_RATE=${SCALE_CONNECT_RATE:-300}
PROBE_PER_S=${SCALE_PROBE_PER_S:-1000}
PROBE_SECS=${SCALE_PROBE_SECS:-10}
LAYOUTS=${SCALE_LAYOUTS:-"rooms echo-rooms large large-quiet echo-large"}
PER_PROC=5000
export PATH="$HOME/.cargo/bin:$PATH"
# Server state (--persist-to) on tmpfs: Durable Object storage here is a local SQLite file per
# object, and this shared box's disk, not the runtime, would set the pace (see docs/BENCHMARKS.md).
WORK=$(mktemp -d "${BENCH_TMP:-/dev/shm}/switchboard-bench-scaling.XXXXXX")
source "$ROOT/bench/servers.sh"
LG_PIDS=()
trap 'for p in "${LG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; stop_servers; rm -rf "$WORK"' EXIT
trap 'exit 143' TERM; trap 'exit 130' INT
ulimit -n "$(ulimit -Hn)"
build_servers
LOADGEN="$ROOT/target/release/loadgen"
OUT="$ROOT/target/bench-scaling.jsonl"
: > "$OUT"

source "$ROOT/bench/inner-port.sh"   # inner_port PGID PROXY_PORT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# step LAYOUT N
step() {
  local layout=$1 n=$2 server mode rooms_per prefix rate fanout
  case $layout in
    rooms) server=switchboard mode=v1 rooms_per=10 ;;
    echo-rooms) server=echo mode=echo rooms_per=10 ;;
    large|large-quiet) server=switchboard mode=v1 rooms_per=$n ;;
    echo-large) server=echo mode=echo rooms_per=$n ;;
  esac
  fanout=1; [ "$mode" = echo ] && fanout=$((rooms_per - 1))
  rate=$(python3 -c "print($PROBE_PER_S / $n / $fanout)")
  [ "$layout" = echo-large ] && rate=0
  if [ "$server" = switchboard ]; then
    start_switchboard 28787 29229 --var MAX_PEERS:32768 --var PRESENCE_MAX_PEERS:32768 \
      --var RATE_PER_S:1000 --var RATE_BURST:1000
  else
    start_echo 28788 29230
  fi
  local pgid=$LAST_PGID proxy_port=$([ "$server" = switchboard ] && echo 28787 || echo 28788)
  # Switchboard's clients speak protocol v1.1 (`cseq`), as the SDK does.
  local proto_args=()
  [ "$server" = switchboard ] && proto_args=(--cseq)
  [ "$layout" = large-quiet ] && proto_args+=(--presence-off)
  read -r port inner_pid < <(inner_port "$pgid" "$proxy_port") || { echo "no inner workerd port" >&2; return 1; }
  local proxy_pid
  for p in $(ps -o pid= -g "$pgid"); do
    if [ "$(cat "/proc/$p/comm")" = workerd ] && [ "$p" != "$inner_pid" ]; then proxy_pid=$p; fi
  done
  local base_rss base_proxy
  base_rss=$(rss_kib "$inner_pid"); base_proxy=$(rss_kib "$proxy_pid")
  prefix="sc-$layout-$n-$RANDOM"
  rm -f "$WORK"/ready-* "$WORK"/out-* "$WORK/go"
  local procs=$(( (n + PER_PROC - 1) / PER_PROC )) p first count rooms
  local per_rate
  per_rate=$(python3 -c "print($CONNECT_RATE / $procs)")
  LG_PIDS=()
  for p in $(seq 0 $((procs - 1))); do
    first=$((p * PER_PROC)); count=$(( n - first < PER_PROC ? n - first : PER_PROC ))
    if [ "$rooms_per" = "$n" ]; then rooms=1; room_prefix=$prefix; else rooms=$(( (count + rooms_per - 1) / rooms_per )); room_prefix=$prefix-p$p; fi
    "${NICE[@]}" "$LOADGEN" --mode "$mode" --target "127.0.0.1:$port" --clients "$count" --first-client "$first" \
      --rooms "$rooms" --room-prefix "$room_prefix" --rate "$rate" --duration "$PROBE_SECS" "${proto_args[@]}" \
      --drain-secs 5 --connect-rate "$per_rate" --connect-timeout 30 --quiet \
      --deadline $(( n / CONNECT_RATE + PROBE_SECS + 300 )) \
      --ready-file "$WORK/ready-$p" --go-file "$WORK/go" --out "$WORK/out-$p.json" > /dev/null 2> "$WORK/lg-$p.err" &
    LG_PIDS+=($!)
  done
  # Wait until every process has its clients joined (or failed), bounded.
  local t0=$SECONDS
  while :; do
    local ready=0
    for p in $(seq 0 $((procs - 1))); do [ -f "$WORK/ready-$p" ] && ready=$((ready + 1)); done
    [ "$ready" = "$procs" ] && break
    [ $((SECONDS - t0)) -gt $(( n / CONNECT_RATE + 240 )) ] && { echo "step $layout $n: joins did not finish" >&2; break; }
    sleep 0.5
  done
  local held_rss held_proxy
  held_rss=$(rss_kib "$inner_pid"); held_proxy=$(rss_kib "$proxy_pid")
  local fds
  fds=$(ls "/proc/$inner_pid/fd" | wc -l)
  touch "$WORK/go"
  for pid in "${LG_PIDS[@]}"; do wait "$pid" || true; done
  LG_PIDS=()
  python3 - "$OUT" "$layout" "$n" "$base_rss" "$held_rss" "$base_proxy" "$held_proxy" "$fds" "$procs" "$WORK"/out-*.json <<'PY'
import json, sys
out, layout, n, base, held, base_proxy, held_proxy, fds, procs = sys.argv[1:10]
runs = [json.load(open(f)) for f in sys.argv[10:]]
connected = sum(r["connect"]["connected"] for r in runs)
row = {
    "layout": layout, "clients": int(n), "processes": int(procs), "connected": connected,
    "failed": sum(r["connect"]["failed"] for r in runs),
    "failed_by_reason": {k: sum(r["connect"]["failed_by_reason"].get(k, 0) for r in runs)
                         for k in {k for r in runs for k in r["connect"]["failed_by_reason"]}},
    "join_seconds": max(r["connect"]["seconds"] for r in runs),
    "join_p99_ms": max(r["connect"]["join_ms"]["p99"] for r in runs),
    "rss_kib_before": int(base), "rss_kib_held": int(held),
    "proxy_rss_kib_before": int(base_proxy), "proxy_rss_kib_held": int(held_proxy),
    "runtime_fds_held": int(fds),
    "bytes_per_connection": (int(held) - int(base)) * 1024 / connected if connected else None,
    "probe_delivered": sum(r["msgs"]["delivered"] for r in runs),
    "probe_expected": sum(r["msgs"]["expected"] for r in runs),
    # loadgen reports percentiles per process; the step's figure is the largest of them.
    "probe_p50_ms": max(r["latency_ms"]["p50"] for r in runs),
    "probe_p99_ms": max(r["latency_ms"]["p99"] for r in runs),
    "errors": {k: sum(r["errors_by_code"].get(k, 0) for r in runs)
               for k in {k for r in runs for k in r["errors_by_code"]}},
}
print(json.dumps(row), file=open(out, "a"))
print(f"{layout:>10} {n:>6}: {connected} held, {row['failed']} failed, "
      f"{row['bytes_per_connection'] or 0:,.0f} B/conn, probe p99 {row['probe_p99_ms']:.1f} ms "
      f"({row['probe_delivered']}/{row['probe_expected']})", file=sys.stderr)
PY
  stop_server "$pgid"
}

for layout in $LAYOUTS; do
  case $layout in
    large) steps=$LARGE_STEPS ;;
    large-quiet) steps=$QUIET_STEPS ;;
    echo-large) steps=$ECHO_LARGE_STEPS ;;
    *) steps=$STEPS ;;
  esac
  for n in $steps; do step "$layout" "$n"; done
done
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src proto Cargo.toml wrangler.toml || echo "+changes")
python3 - "$OUT" "$ROOT/target/bench-scaling.json" "$COMMIT" <<'PY'
import datetime, json, platform, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
doc = {"machine": {"date": datetime.date.today().isoformat(), "nproc": int(sh("nproc")), "kernel": platform.release(),
                   "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(), "commit": sys.argv[3]},
       "steps": rows}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
PY
bash "$ROOT/scripts/plot-scaling.sh" "$ROOT/target/bench-scaling.json" "$ROOT/docs/scaling.png"
