#!/usr/bin/env bash
# 100,000 live TURN allocations on one machine whose per-process file-descriptor limit is 20,000:
# several relay processes share the listening address with SO_REUSEPORT (the kernel spreads
# clients over them by hashing each client's addresses), each relaying on its own loopback IP.
# Reports the relays' resident memory and the kernel's slab memory per allocation.
#
#   unshare -n bash -c 'ip link set lo up && exec bash scripts/bench-100k.sh'
#   BENCH_ALLOCATIONS=100000 BENCH_PROCESSES=7 (defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${BENCH_ALLOCATIONS:-100000}
P=${BENCH_PROCESSES:-7}
PER=$(( N / P + N / P / 4 + 100 ))   # capacity per process, with room for an uneven spread
cargo build --release -q -p switchboard-relay
cargo bench -q -p switchboard-relay --bench turn_closed_loop --no-run
SECRET=bench-secret-$$
WORK=$(mktemp -d /tmp/switchboard-100k.XXXXXX)
PGIDS=()
stop() {
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${PGIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap stop EXIT
ulimit -n 20000
rss_sum() { local t=0; for p in "${PIDS[@]}"; do t=$(( t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status") )); done; echo "$t"; }
slab() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
PIDS=()
for i in $(seq 1 "$P"); do
  RELAY_SECRET=$SECRET setsid "$ROOT/target/release/relay" --listen 127.0.0.1:36478 --reuse-port \
    --threads 1 --realm interop --allow-loopback-peers --relay-ip "127.0.1.$i" \
    --port-range 10000-$(( 10000 + PER )) --max-allocations "$PER" \
    --max-allocations-per-user 10 --drain-timeout 0 --metrics-listen "127.0.0.1:$(( 36500 + i ))" \
    > "$WORK/relay-$i.log" 2>&1 < /dev/null &
  PGIDS+=($!); PIDS+=($!)
done
for i in $(seq 1 "$P"); do
  for _ in $(seq 1 100); do grep -q "relay ready" "$WORK/relay-$i.log" && break; sleep 0.1; done
done
sleep 1
RSS0=$(rss_sum); SLAB0=$(slab); UDP0=$(awk '/^UDP:/ {print $3}' /proc/net/sockstat)
START=$(date +%s.%N)
cargo bench -q -p switchboard-relay --bench turn_closed_loop -- --server 127.0.0.1:36478 \
  --secret "$SECRET" --label all --hold "$N" --server-pid "${PIDS[0]}" --max-seconds 600 > "$WORK/hold.md"
END=$(date +%s.%N)
sleep 2
RSS1=$(rss_sum); SLAB1=$(slab); UDP1=$(awk '/^UDP:/ {print $3}' /proc/net/sockstat)
HELD=$(awk -F'|' '{gsub(/ /, "", $3); print $3}' "$WORK/hold.md")
echo "| processes | allocations held | relayed UDP sockets (sockstat) | seconds to create | relay RSS KiB before → after | bytes RSS per allocation | kernel slab KiB before → after | kernel slab bytes per allocation |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| $P | $HELD | $(( UDP1 - UDP0 )) | $(echo "$END - $START" | bc) | $RSS0 → $RSS1 | $(( (RSS1 - RSS0) * 1024 / HELD )) | $SLAB0 → $SLAB1 | $(( (SLAB1 - SLAB0) * 1024 / HELD )) |"
echo
echo "Allocations per process (switchboard_relay_allocations):"
for i in $(seq 1 "$P"); do
  echo "- relay $i: $(curl -sf "http://127.0.0.1:$(( 36500 + i ))/metrics" | awk '/^switchboard_relay_allocations / {print $2}')"
done
