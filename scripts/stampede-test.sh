#!/usr/bin/env bash
# No reconnect stampede (issue #8 item 6): 500 loadgen clients in 10 rooms exchange signals; the
# operator drains every room at once (POST /v1/rooms/{room}/drain?retry_after_ms=5000, which
# closes each socket with 4003 and reason `retry_after_ms=5000`). Each client waits a uniformly
# random time in [0, 5000] ms (full jitter) and resumes. Asserts from loadgen's JSON that every
# client was closed once and resumed, that the reconnects are spread over the announced window
# (none before the drain; measured from the first 4003 a client received, all within the window
# plus the time the server took to close every socket plus 1 s of slack, and no window/10
# interval with more than 20 % of them; each client's own wait within [0, window]) and, with `loadgen --check`, that nothing was lost or duplicated and no
# error frame was sent (clients use protocol v1.1 `cseq`, so a frame in flight when its socket is
# closed is resent after the resume). Runs against the built Worker on wrangler dev in its own network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "${SB_IN_NETNS:-0}" != 1 ]; then
  exec env SB_IN_NETNS=1 unshare -n bash -c 'ip link set lo up && exec "$@"' _ bash "$0" "$@"
fi
export PATH="$HOME/.cargo/bin:$PATH"
CLIENTS=500 ROOMS=10 WINDOW_MS=5000 ADMIN=stampede-admin-token
cargo build -q -p switchboard-loadgen
LOADGEN="$ROOT/target/debug/loadgen"
# Server state (--persist-to) on tmpfs: Durable Object storage here is a local SQLite file per
# object, and this shared box's disk, not the runtime, would set the pace (see docs/BENCHMARKS.md).
WORK=$(mktemp -d "${BENCH_TMP:-/dev/shm}/switchboard-stampede.XXXXXX")
source "$ROOT/bench/servers.sh"
LG_PID=
trap '[ -n "$LG_PID" ] && kill "$LG_PID" 2>/dev/null; stop_servers; rm -rf "$WORK"' EXIT
trap 'exit 143' TERM; trap 'exit 130' INT
ulimit -n "$(ulimit -Hn)"
start_switchboard 28987 29429 --var "ADMIN_TOKEN:$ADMIN" --var HEARTBEAT_MS:5000 --var RESUME_WINDOW_MS:30000

PREFIX=stampede-$RANDOM
"$LOADGEN" --target 127.0.0.1:28987 --clients $CLIENTS --rooms $ROOMS --room-prefix "$PREFIX" \
  --cseq --rate 1 --duration 20 --drain-secs 20 --deadline 150 --connect-rate 100 --connect-timeout 30 \
  --ready-file "$WORK/ready" \
  --going-away-events --check --quiet --out "$WORK/summary.json" > /dev/null 2> "$WORK/loadgen.err" &
LG_PID=$!
for _ in $(seq 1 1200); do [ -f "$WORK/ready" ] && break; kill -0 "$LG_PID" 2>/dev/null || break; sleep 0.1; done
[ -f "$WORK/ready" ] || { echo "loadgen did not get its clients joined" >&2; cat "$WORK/loadgen.err" >&2; exit 1; }

# Drain all rooms at once, while the clients are sending.
DRAIN_MS=$(date +%s%3N)
CURLS=()
for r in $(seq 0 $((ROOMS - 1))); do
  curl -s -o "$WORK/drain-$r.body" -w '%{http_code}\n' -X POST -H "Authorization: Bearer $ADMIN" \
    "http://127.0.0.1:28987/v1/rooms/$PREFIX-$r/drain?retry_after_ms=$WINDOW_MS" > "$WORK/drain-$r.status" &
  CURLS+=($!)
done
wait "${CURLS[@]}" || true
for r in $(seq 0 $((ROOMS - 1))); do
  status=$(cat "$WORK/drain-$r.status")
  [ "$status" = 200 ] || { echo "drain of room $r answered $status: $(cat "$WORK/drain-$r.body")" >&2; exit 1; }
done

LG_RC=0; wait "$LG_PID" || LG_RC=$?; LG_PID=
cat "$WORK/loadgen.err" >&2
python3 - "$WORK/summary.json" "$DRAIN_MS" "$WINDOW_MS" "$CLIENTS" "$LG_RC" <<'PY'
import json, sys
summary, drain_ms, window, clients, lg_rc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
d = json.load(open(summary))
ev = d["going_away"]["events"]
problems = []
if lg_rc != 0:
    problems.append(f"loadgen --check failed (exit {lg_rc}): see above")
if len(ev) != clients:
    problems.append(f"{len(ev)} of {clients} clients got a 4003 close")
if any(e["retry_after_ms"] != window for e in ev):
    problems.append("a close announced another window than requested")
if not all(e["resumed"] for e in ev):
    problems.append(f"{sum(not e['resumed'] for e in ev)} clients did not resume the same peer")
if any(e["closed_unix_ms"] < drain_ms or e["reconnect_unix_ms"] < drain_ms for e in ev):
    problems.append("a 4003 close or reconnect came before the drain request")
if any(not 0 <= e["waited_ms"] <= window for e in ev):
    problems.append("a client waited outside [0, window]")
# From the moment the drain reached the first client: the server closes 500 sockets over some
# time (longer on a loaded machine), so the slack covers that measured spread plus 1 s.
first = min((e["closed_unix_ms"] for e in ev), default=drain_ms)
off = sorted(e["reconnect_unix_ms"] - first for e in ev)
spread = max((e["closed_unix_ms"] for e in ev), default=first) - first
slack = spread + 1000
print(f"drain request to first 4003 close: {first - drain_ms:.0f} ms; last close after "
      f"{spread:.0f} ms more", file=sys.stderr)
late = [o for o in off if o > window + slack]
if late:
    problems.append(f"{len(late)} reconnects later than the window + {slack} ms (latest {late[-1]:.0f} ms)")
# Reconnects per tenth of the window (bins continue past the window's end for late closes).
tenths = [0] * (int(max(off, default=0) * 10 // window) + 1)
for o in off:
    tenths[max(0, int(o * 10 // window))] += 1
print(f"reconnects per tenth of the {window} ms window after the first close: {tenths}", file=sys.stderr)
if off and max(tenths) > 0.2 * len(off):
    problems.append(f"{max(tenths)} of {len(off)} reconnects in one tenth of the window (stampede)")
print(f"{len(ev)} clients closed with 4003, {d['going_away']['resumed']} resumed; "
      f"{d['msgs']['delivered']} of {d['msgs']['expected']} messages delivered, lost {d['msgs']['lost']}, "
      f"duplicated {d['msgs']['duplicated']}", file=sys.stderr)
if problems:
    print("stampede test FAILED: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print("stampede test passed", file=sys.stderr)
PY
