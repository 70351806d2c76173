# Sourced by the benchmarks that drive `wrangler dev`.
# inner_port PGID PROXY_PORT: prints "PORT PID" of the workerd that runs the Worker (the one that
# answers /healthz like wrangler's proxy does, on a port other than the proxy's), so load can
# bypass the proxy workerd.
inner_port() {
  local pgid=$1 proxy=$2 pid port
  for pid in $(ps -o pid= -g "$pgid"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = workerd ] || continue
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "entry=127.0.0.1:$proxy " && continue
    for port in $(ss -ltnpH | grep "pid=$pid," | awk '{print $4}' | sed 's/.*://'); do
      if curl -sf --max-time 2 "http://127.0.0.1:$port/healthz" > /dev/null; then
        echo "$port $pid"; return 0
      fi
    done
  done
  return 1
}
