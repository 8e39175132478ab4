#!/usr/bin/env python3
"""Draws the throughput and latency chart BENCHMARKS.md shows from scripts/bench's CSV files.

usage: bench-chart.py RESULTS_DIR OUTPUT.png
"""
import csv
import glob
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    return list(csv.DictReader(open(path))) if os.path.exists(path) else []


def main():
    results, output = sys.argv[1], sys.argv[2]
    catchup, ingest = rows(f"{results}/catchup.csv"), rows(f"{results}/ingest.csv")
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})

    labels, ours, anchors = [], [], []
    for instances in ["1", "2"]:
        subset = [row for row in catchup if row["instances"] == instances]
        if subset:
            labels.append(f"catch-up\n{instances} inst./group")
            ours.append(statistics.median(min(float(r["user_rpc_events_per_s"]), float(r["org_rpc_events_per_s"])) for r in subset))
            anchors.append(statistics.median(float(r["c_drain_msg_per_s"]) for r in subset))
    if ingest:
        labels.append("ingest\n(ctl import, 64 in flight)")
        ours.append(statistics.median(float(r["import_rows_per_s"]) for r in ingest))
        anchors.append(statistics.median(float(r["c_publish_msg_per_s"]) for r in ingest))
    positions = range(len(labels))
    throughput.bar([p - 0.2 for p in positions], anchors, width=0.4, label="anchor: plain C on librabbitmq", color="#bbbbbb")
    bars = throughput.bar([p + 0.2 for p in positions], ours, width=0.4, label="EntitySync", color="#3b6ea5")
    for bar, value, anchor in zip(bars, ours, anchors):
        throughput.annotate(f"{value:,.0f}\n({value / anchor:.2f}×)", (bar.get_x() + bar.get_width() / 2, value),
                            ha="center", va="bottom", fontsize=8)
    throughput.set_xticks(list(positions), labels, fontsize=8)
    throughput.set_ylabel("events / s (median of rounds)")
    throughput.set_title("Throughput against its anchor, same run")
    throughput.legend(fontsize=8)

    samples = []
    for path in sorted(glob.glob(f"{results}/latency-*.txt")):
        samples.extend(float(line) for line in open(path) if line.strip())
    if samples:
        ordered = sorted(samples)
        points = [50, 90, 95, 99, 99.9]
        values = [ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] for p in points]
        latency.bar([f"p{p:g}" for p in points], values, color="#3b6ea5")
        for index, value in enumerate(values):
            latency.annotate(f"{value:.1f}", (index, value), ha="center", va="bottom", fontsize=8)
        # Each round's rate is half its own import rate unless one was set: name their range.
        rates = sorted(round(float(row["latency_rate"])) for row in ingest)
        rate = "?" if not rates else f"{rates[0]:,}" if rates[0] == rates[-1] else f"{rates[0]:,}–{rates[-1]:,}"
        latency.set_title(f"Reply → visible in both groups\n({len(samples)} mutations at {rate}/s)")
        latency.set_ylabel("ms")
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
