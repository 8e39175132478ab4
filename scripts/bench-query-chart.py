#!/usr/bin/env python3
"""Draws the entity-query chart BENCHMARKS.md shows from scripts/bench query's CSV: GetUser and
Health/Check req/s and server CPU per call for each server, medians of the rounds.

usage: bench-query-chart.py QUERY.csv OUTPUT.png
"""
import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {"nghttpd": "nghttpd\nstatic file", "c": "C on\nlibnghttp2", "grpc-go": "grpc-go", "python": "Python\ngrpcio",
         "user-rpc": "user-rpc\n(SQLite read)", "user-rpc-tls": "user-rpc\nover TLS"}


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, color in [("GetUser", "#3b6ea5"), ("Check", "#9bb7d4")]:
        servers = [s for s in NAMES if any(r["server"] == s and r["method"] == method for r in rows)]
        for axis, column, label in [(axes[0], "req_per_s", "calls / s"), (axes[1], "cpu_us_per_call", "server CPU µs per call")]:
            values = [statistics.median(float(r[column]) for r in rows if r["server"] == s and r["method"] == method)
                      for s in servers]
            offset = -0.2 if method == "GetUser" else 0.2
            positions = [list(NAMES).index(s) + offset for s in servers]
            bars = axis.bar(positions, values, width=0.4, color=color, label=method)
            for bar, value in zip(bars, values):
                axis.annotate(f"{value:,.0f}" if column == "req_per_s" else f"{value:.1f}",
                              (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=7)
            axis.set_ylabel(label)
    for axis, title in [(axes[0], "Throughput (h2load -c 4 -m 10, one client thread)"), (axes[1], "Server CPU per call (log scale)")]:
        axis.set_xticks(range(len(NAMES)), list(NAMES.values()), fontsize=8)
        axis.set_title(title)
        axis.legend(fontsize=8)
    axes[1].set_yscale("log")
    figure.tight_layout()
    figure.savefig(sys.argv[2], dpi=110)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
