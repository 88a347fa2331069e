"""Benchmark results for people and scripts: table rows, CSV, Markdown, and plots."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from effedge.io import atomic_write

COLUMNS = ["label", "backend", "precision", "batch", "median ms", "p90 ms", "p99 ms", "mean ms", "cv %", "qps",
           "images/s", "speedup"]


def rows(results: list[dict]) -> list[list]:
    table = []
    for r in results:
        latency = r["latency_ms"]
        speedups = [v for k, v in r.items() if k.startswith("speedup_vs_")]
        table.append([r["label"], r["backend"], r["precision"], r["batch"], f"{latency['median']:.2f}",
                      f"{latency['p90']:.2f}", f"{latency['p99']:.2f}", f"{latency['mean']:.2f}",
                      f"{latency['cv'] * 100:.1f}", f"{r['throughput_qps']:.1f}", f"{r['images_per_s']:.1f}",
                      f"{speedups[0]:.2f}×" if speedups else "-"])
    return table


def to_csv(results: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "backend", "precision", "batch", "variant", "phi", "mode", *(
        f"latency_{k}_ms" for k in ("min", "max", "mean", "median", "p90", "p95", "p99")), "latency_cv",
        "throughput_qps", "images_per_s", "energy_mj_per_inference"])
    for r in results:
        latency = r["latency_ms"]
        writer.writerow([r["label"], r["backend"], r["precision"], r["batch"], r.get("variant"), r.get("phi"),
                         r["mode"], *(latency[k] for k in ("min", "max", "mean", "median", "p90", "p95", "p99")),
                         latency["cv"], r["throughput_qps"], r["images_per_s"], r.get("energy_mj_per_inference")])
    return buffer.getvalue()


def to_markdown(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows(results)]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """Left: median latency vs φ, one line per backend/precision/batch. Right: throughput vs latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[str, list] = {}
    for r in results:
        series.setdefault(f"{r['backend']} {r['precision']} b{r['batch']}", []).append(r)
    colours = {name: f"C{i}" for i, name in enumerate(sorted(series))}
    for name, points in sorted(series.items()):
        points = sorted((r for r in points if r.get("phi") is not None), key=lambda r: r["phi"])
        left.plot([r["phi"] for r in points], [r["latency_ms"]["median"] for r in points], marker="o", label=name,
                  color=colours[name])
        for r in points:
            left.annotate(r.get("variant") or "", (r["phi"], r["latency_ms"]["median"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    left.set(xlabel="compound coefficient φ", ylabel="median latency (ms)", title="latency vs φ")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for name, points in series.items():
        right.scatter([r["latency_ms"]["median"] for r in points], [r["images_per_s"] for r in points],
                      color=colours[name], label=name)
        for r in points:
            right.annotate(r.get("variant") or r["label"], (r["latency_ms"]["median"], r["images_per_s"]),
                           fontsize=7, textcoords="offset points", xytext=(3, 3))
    right.legend(fontsize=7)
    right.set(xlabel="median latency (ms)", ylabel="images/s", title="throughput vs latency")
    right.grid(alpha=0.3)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    plt.close(figure)
    atomic_write(path, image.getvalue())
