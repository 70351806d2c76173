#!/usr/bin/env bash
# The Grafana dashboard (docs/grafana-relay.json) against a real Prometheus scrape: starts a relay
# and Prometheus (Debian package `prometheus`) in a fresh network namespace, relays a little
# traffic with coturn's turnutils_uclient, waits for scrapes, and checks that every PromQL
# expression in the dashboard returns data (tests/dashboard/check_queries.py). Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RELAY_BIN=${RELAY_BIN:-$ROOT/target/release/relay}
[ -x "$RELAY_BIN" ] || { echo "build the relay first: cargo build --release -p switchboard-relay" >&2; exit 1; }
command -v prometheus >/dev/null || { echo "prometheus is not installed: apt-get install prometheus (scripts/install.sh)" >&2; exit 1; }
command -v turnutils_uclient >/dev/null || { echo "coturn is not installed (scripts/install.sh)" >&2; exit 1; }

if [ "${SWITCHBOARD_IN_NETNS:-0}" != 1 ]; then
  exec unshare -n env SWITCHBOARD_IN_NETNS=1 RELAY_BIN="$RELAY_BIN" bash -c 'ip link set lo up && exec bash "$0"' "$0"
fi

SECRET="dashboard-$RANDOM$RANDOM"
WORK=$(mktemp -d /tmp/switchboard-dashboard.XXXXXX)
PGIDS=()
cleanup() {
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.3
  for g in "${PGIDS[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "$*" >&2; echo "--- relay log ---" >&2; tail -n 30 "$WORK/relay.log" >&2;
         echo "--- prometheus log ---" >&2; tail -n 30 "$WORK/prometheus.log" >&2; exit 1; }

setsid "$RELAY_BIN" --listen 127.0.0.1:3478 --realm dashboard --secret "$SECRET" --allow-loopback-peers \
  --metrics-listen 127.0.0.1:9478 --drain-timeout 0 > "$WORK/relay.log" 2>&1 < /dev/null &
PGIDS+=($!)
setsid turnutils_peer -L 127.0.0.1 -p 3480 > /dev/null 2>&1 < /dev/null &
PGIDS+=($!)
cat > "$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: switchboard-relay
    static_configs:
      - targets: ["127.0.0.1:9478"]
YML
setsid prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address=127.0.0.1:9090 > "$WORK/prometheus.log" 2>&1 < /dev/null &
PGIDS+=($!)

for _ in $(seq 1 100); do curl -sf http://127.0.0.1:9478/healthz >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:9478/healthz >/dev/null || fail "the relay did not start"

# Some real traffic, so the scrape holds non-zero counters too.
turnutils_uclient -W "$SECRET" -u dash -e 127.0.0.1 -r 3480 -n 20 -m 2 -l 120 127.0.0.1 > "$WORK/uclient.log" 2>&1 \
  || { cat "$WORK/uclient.log" >&2; fail "turnutils_uclient failed"; }

# Wait (bounded) until Prometheus has scraped the relay a few times after the traffic, so
# rate() over the dashboard's interval has samples to work with.
query() { curl -sf --get http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1"; }
ready=0
for _ in $(seq 1 120); do
  if query 'count_over_time(switchboard_relay_relayed_packets_total{direction="in"}[15s]) >= 4 and switchboard_relay_relayed_packets_total{direction="in"} > 0' \
      2>/dev/null | grep -q '"result":\[{'; then
    ready=1; break
  fi
  sleep 0.25
done
[ $ready = 1 ] || fail "Prometheus never scraped the relay's traffic"

python3 tests/dashboard/check_queries.py docs/grafana-relay.json http://127.0.0.1:9090 \
  http://127.0.0.1:9478/metrics 15s || fail "dashboard check failed"
