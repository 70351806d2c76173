"""Markdown report of scripts/bench-signaling.sh: reads loadgen summaries (one JSON per line, each
with a "label"), prints the tables and writes them all, with the machine, to one JSON file.

usage: signaling_report.py RESULTS.jsonl COMMIT SECS DRAIN ROUNDS OUT.json
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

results_path, commit, secs, drain, rounds, out_path = sys.argv[1:7]
rounds = int(rounds)
runs = [json.loads(line) for line in open(results_path) if line.strip()]


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


machine = {
    "date": datetime.date.today().isoformat(),
    "nproc": int(sh("nproc") or 0),
    "kernel": platform.release(),
    "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
    "commit": commit,
    "wrangler": sh("node_modules/.bin/wrangler --version 2>/dev/null | tail -1"),
}
with open(out_path, "w") as f:
    json.dump({"machine": machine, "send_seconds": float(secs), "drain_seconds": float(drain), "rounds": rounds,
               "runs": runs}, f, indent=1)


def role_cpu(run, *roles):
    server = run.get("server") or {}
    return sum(p["cpu_ms"] for p in server.get("processes", []) if p["role"] in roles)


def pct(cpu_ms, run):
    w = (run.get("server") or {}).get("window_seconds") or 1
    return f"{cpu_ms / (w * 10):.0f}"


print(f"Measured {machine['date']} on {machine['cpu']} ({machine['nproc']} cores, `nproc`), "
      f"Linux {machine['kernel']}, loopback in a network namespace; Switchboard at commit `{commit}`.")
# The knobs the run was given, so the printed command reproduces it.
rounds_env = "".join(f"{k}={os.environ[k]} " for k in ("BENCH_NICE", "BENCH_SECS", "BENCH_ROUNDS", "BENCH_LOADS", "BENCH_JOIN_CLIENTS", "BENCH_VIA")
                     if os.environ.get(k))
print(f"Command: `{rounds_env}bash scripts/bench-signaling.sh --write` ({secs} s of sending per row; a message "
      f"not delivered within {drain} s after the window counts as not delivered"
      + (f"; each load {rounds} rounds, the servers in turn, protocol v1 in the first round only" if rounds > 1 else "")
      + "). loadgen shares the machine; its own CPU per message is in the last column. "
      + ("loadgen connects straight to the workerd that runs each Worker, past wrangler's proxy workerd."
         if os.environ.get("BENCH_VIA", "direct") == "direct" else
         "loadgen connects through wrangler's proxy workerd (`BENCH_VIA=proxy`)."))


def load_of(r):
    return (r["clients"], r["rate_per_client"])


def median(xs):
    return statistics.median(xs) if xs else float("nan")


if rounds > 1:
    # Paired by round: the room against the echo floor run just before it.
    print()
    print("| clients × msg/s | rounds | CPU µs per msg, echo floor / v1.1 (median) | CPU ratio by round | median "
          "| p99 ms, echo floor / v1.1 (median) | p99 ratio by round | median |")
    print("| --- | ---: | --- | --- | ---: | --- | --- | ---: |")
    for load in dict.fromkeys(load_of(r) for r in runs if not r["label"].endswith("join")):
        pairs = []
        for n in range(1, rounds + 1):
            of = {r["label"]: r for r in runs if load_of(r) == load and r.get("round", 1) == n}
            if "echo floor" in of and "switchboard v1.1" in of:
                pairs.append((of["echo floor"], of["switchboard v1.1"]))
        if not pairs:
            continue
        cpu = [(f["server"]["cpu_us_per_delivered_msg"], s["server"]["cpu_us_per_delivered_msg"]) for f, s in pairs]
        p99 = [(f["latency_ms"]["p99"], s["latency_ms"]["p99"]) for f, s in pairs]
        cr = [b / a for a, b in cpu if a]
        pr = [b / a for a, b in p99 if a]
        print(f"| {load[0]:,} × {load[1]:g} | {len(pairs)} | {median([a for a, _ in cpu]):.0f} / {median([b for _, b in cpu]):.0f} "
              f"| {', '.join(f'{x:.2f}' for x in cr)} | **{median(cr):.2f}×** "
              f"| {median([a for a, _ in p99]):.1f} / {median([b for _, b in p99]):.1f} "
              f"| {', '.join(f'{x:.2f}' for x in pr)} | **{median(pr):.2f}×** |")

print()
print("| server | clients × msg/s | round | offered msg/s | delivered msg/s | not delivered | dup | p50 ms | p99 ms | max ms "
      "| server CPU % of a core (proxy + runtime) | CPU µs per msg | RSS MB | loadgen CPU µs per msg |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
for r in runs:
    if r["label"].endswith("join"):
        continue
    m, lat, srv = r["msgs"], r["latency_ms"], r.get("server") or {}
    total = srv.get("cpu_ms", 0)
    if r["mode"] == "peerjs":
        split = f"{pct(total, r)} (node)"
    else:
        proxy = role_cpu(r, "workerd (proxy)")
        split = f"{pct(total, r)} ({pct(proxy, r)} + {pct(role_cpu(r, 'workerd'), r)})"
    lost = m["lost"]
    lost_s = f"{lost} ({100 * lost / m['expected']:.1f} %)" if m["expected"] else "0"
    failed = r["connect"]["failed"]
    clients = f"{r['clients']:,} × {r['rate_per_client']:g}" + (f" ({failed} failed to join)" if failed else "")
    own = (r.get("loadgen_cpu") or {}).get("cpu_us_per_delivered_msg")
    own_s = f"{own:.0f}" if own is not None else "–"
    print(f"| {r['label']} | {clients} | {r.get('round', 1)} | {m['sent_per_s']:,.0f} | {m['delivered_per_s']:,.0f} | {lost_s} | "
          f"{m['duplicated']} | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.0f} | {split} | "
          f"{srv.get('cpu_us_per_delivered_msg', 0):.0f} | {srv.get('rss_kib', 0) / 1024:.0f} | {own_s} |")
for r in runs:
    if not r["label"].endswith("join"):
        continue
    c = r["connect"]
    reasons = ", ".join(f"{k}: {v}" for k, v in c["failed_by_reason"].items()) or "none"
    print()
    print(f"Join test ({r['label']}): {r['clients']:,} clients joining at 500/s: {c['connected']:,} joined, "
          f"{c['failed']} failed ({reasons}); time to `welcome` p50 {c['join_ms']['p50']:.0f} ms, "
          f"p99 {c['join_ms']['p99']:.0f} ms, max {c['join_ms']['max']:.0f} ms (of those that joined); the last join settled after {c['seconds']:.1f} s.")
