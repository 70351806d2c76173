"""Markdown table of the scaling curve (target/bench-scaling.json from scripts/bench-scaling.sh).
usage: scaling_report.py IN.json"""
import json
import sys

doc = json.load(open(sys.argv[1]))
m = doc["machine"]
names = {"rooms": "Switchboard, rooms of 10", "echo-rooms": "echo floor, rooms of 10",
         "large": "Switchboard, one room", "large-quiet": "Switchboard, one room, presence off", "echo-large": "echo floor, one room"}
print(f"Measured {m['date']} on {m['cpu']} ({m['nproc']} cores), Linux {m['kernel']}, commit `{m['commit']}`.")
print("Command: `BENCH_NICE=-10 bash scripts/bench-scaling.sh` (writes target/bench-scaling.json and docs/scaling.png).")
print()
print("| layout | clients | held | failed | workerd RSS before MB | RSS held MB | KiB per held connection | joins took s | probe delivered | probe p50 ms | probe p99 ms |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in doc["steps"]:
    per = f"{r['bytes_per_connection'] / 1024:.1f}" if r["bytes_per_connection"] else "–"
    probe = f"{r['probe_delivered']}/{r['probe_expected']}" if r["probe_expected"] else "no probe"
    p50 = f"{r['probe_p50_ms']:.1f}" if r["probe_delivered"] else "–"
    p99 = f"{r['probe_p99_ms']:.1f}" if r["probe_delivered"] else "–"
    reasons = r["failed_by_reason"]
    # (runs before the reasons were summed across processes kept one process's reasons only)
    failed = str(r["failed"]) + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})"
                                 if r["failed"] and sum(reasons.values()) == r["failed"] else "")
    print(f"| {names.get(r['layout'], r['layout'])} | {r['clients']:,} | {r['connected']:,} | {failed} | "
          f"{r['rss_kib_before'] / 1024:.0f} | {r['rss_kib_held'] / 1024:.0f} | {per} | {r['join_seconds']:.0f} | {probe} | {p50} | {p99} |")
# Rows added later from a run of some layouts only (SCALE_LAYOUTS) carry their own commit.
later = {}
for r in doc["steps"]:
    if r.get("commit", m["commit"]) != m["commit"]:
        later.setdefault((r["commit"], r["layout"]), []).append(r["clients"])
knob = {"rooms": "SCALE_STEPS", "echo-rooms": "SCALE_STEPS", "large": "SCALE_LARGE_STEPS",
        "large-quiet": "SCALE_QUIET_STEPS", "echo-large": "SCALE_ECHO_LARGE_STEPS"}
for (commit, layout), steps in later.items():
    print()
    print(f"Rows \"{names.get(layout, layout)}\": commit `{commit}`, from `BENCH_NICE=-10 SCALE_LAYOUTS={layout} "
          f"{knob.get(layout, 'SCALE_STEPS')}=\"{' '.join(map(str, steps))}\" bash scripts/bench-scaling.sh`, "
          f"merged into this table and plot (docs/scaling.json).")
