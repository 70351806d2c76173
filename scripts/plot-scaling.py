"""Draws the scaling curve: resident memory of the runtime per held connection, and the probe
p99, against connections held, one line per layout. usage: plot-scaling.py IN.json OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

doc = json.load(open(sys.argv[1]))
labels = {
    "rooms": "Switchboard, rooms of 10",
    "echo-rooms": "echo floor, rooms of 10",
    "large": "Switchboard, one room",
    "large-quiet": "Switchboard, one room, presence off",
    "echo-large": "echo floor, one room",
}
fig, (mem, lat, tot) = plt.subplots(1, 3, figsize=(15, 4.5))
for layout in labels:
    rows = sorted((r for r in doc["steps"] if r["layout"] == layout and r["connected"]), key=lambda r: r["connected"])
    if not rows:
        continue
    x = [r["connected"] for r in rows]
    tot.plot(x, [r["rss_kib_held"] / 1024 for r in rows], marker="o", label=labels[layout])
    mem.plot(x, [r["bytes_per_connection"] / 1024 for r in rows], marker="o", label=labels[layout])
    probed = [r for r in rows if r["probe_delivered"]]
    if probed:
        lat.plot([r["connected"] for r in probed], [r["probe_p99_ms"] for r in probed], marker="o", label=labels[layout])
m = doc["machine"]
tot.set(title="workerd resident memory", xlabel="connections held", ylabel="MiB")
mem.set(title="memory per held connection", xlabel="connections held", ylabel="KiB per connection")
lat.set(title="probe latency p99 (~1,000 deliveries/s)", xlabel="connections held", ylabel="ms")
lat.set_yscale("log")
for ax in (mem, lat, tot):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
later = sorted({(r["commit"], labels.get(r["layout"], r["layout"])) for r in doc["steps"] if r.get("commit", m["commit"]) != m["commit"]})
commits = f"commit {m['commit']}" + "".join(f"; {layout}: commit {c}" for c, layout in later)
fig.suptitle(f"Connections on one workerd (wrangler dev), {m['date']}, {m['nproc']} cores, Linux {m['kernel']}, {commits}",
             fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
print(f"wrote {sys.argv[2]}", file=sys.stderr)
