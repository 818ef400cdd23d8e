"""Plots the CSV written by `bench_autoscale --csv` (replicas and backlog over a day).

    cargo run --release -p agentscale-autoscale --example bench_autoscale -- --csv day.csv
    python3 agentscale-autoscale/scripts/plot_day.py day.csv docs/img/autoscale-day.png

Needs matplotlib (pip install matplotlib).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
h = [int(r["t"]) / 3600 for r in rows]
fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
a1.plot(h, [float(r["rate"]) for r in rows], color="gray", label="arrivals (tasks/s)")
a1.step(h, [int(r["desired"]) for r in rows], where="post", color="tab:blue", label="replicas (spec)")
a1.step(h, [int(r["ready"]) for r in rows], where="post", color="tab:green", label="replicas (ready)")
a1.set_ylabel("replicas / rate")
a1.legend(loc="upper left")
a1.set_title("Simulated day: HPA on task_queue_depth (AverageValue 10, 2..20 replicas)")
a2.plot(h, [int(r["backlog"]) for r in rows], color="tab:red", label="waiting tasks")
a2.plot(h, [int(r["in_flight"]) for r in rows], color="tab:orange", label="in flight")
a2.set_ylabel("tasks")
a2.set_xlabel("hour of day")
a2.legend(loc="upper left")
a2.set_xlim(0, 24)
fig.tight_layout()
fig.savefig(dst, dpi=90)
