"""Draw docs/dashboard.png: the graphs of deploy/grafana/pubtasks.json, from what a real
Prometheus answered to their queries in tests/test_prometheus.py (the JSON it writes when
PUBTASKS_DASHBOARD_DATA is set). Grafana cannot run here; matplotlib draws the same series.

    python scripts/dashboard_picture.py DATA.json docs/dashboard.png
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

UNITS = {  # the panels' units, as the dashboard sets them
    "Throughput per entry: acked, nacked, returned": "per second",
    "Tick-to-confirm latency p50 and p99": "seconds",
    "Pending and oldest pending age": "publishes / seconds",
    "Ticks fired, late and by hand": "per second",
    "Failures: failed and unconfirmed": "in each 5 s",
}


def main(source: str, target: str) -> None:
    data = json.loads(Path(source).read_text())
    panels = data["panels"]
    columns = 2
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 3.4 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items(), strict=False):
        for s in series:
            xs = [float(t) - data["started"] for t, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            ax.plot(xs, ys, label=s["legend"], linewidth=1.2)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(UNITS.get(title, ""), fontsize=8)
        ax.set_xlabel("seconds since the worker started", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if title.startswith("Tick-to-confirm"):
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "pubtasks dashboard (deploy/grafana/pubtasks.json), drawn from a real Prometheus "
        "scraping the real worker every second",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=90)


if __name__ == "__main__":
    main(*sys.argv[1:3])
