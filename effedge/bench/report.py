"""Benchmark results for people and scripts: table rows, CSV, Markdown, and plots."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from effedge.io import atomic_write

BASE_COLUMNS = ["label", "backend", "precision", "batch", "median ms", "p90 ms", "p99 ms", "mean ms", "cv %", "qps",
                "images/s"]
# trtexec's breakdown of each iteration (CUDA events where the backend records them; enqueue = host launch time)
BREAKDOWN = {"h2d": "H2D", "compute": "GPU compute", "d2h": "D2H", "enqueue": "enqueue"}
ENERGY = {"energy_mj_per_image": "mJ/image", "energy_mj_per_batch": "mJ/batch"}
CSV_COLUMNS = ["label", "backend", "precision", "batch", "variant", "phi", "mode",
               *(f"latency_{k}_ms" for k in ("min", "max", "mean", "median", "p90", "p95", "p99")), "latency_cv",
               *(f"{metric}_{k}_ms" for metric in BREAKDOWN for k in ("median", "p99")),
               "throughput_qps", "images_per_s", *ENERGY, "speedup_vs_torch"]


def _measured(results: list[dict]) -> tuple[list[str], list[str]]:
    """The breakdown metrics and energy figures that at least one result measured."""
    metrics = [m for m in BREAKDOWN if any(f"{m}_ms" in r for r in results)]
    energy = [key for key in ENERGY if any(r.get(key) is not None for r in results)]
    return metrics, energy


def columns(results: list[dict]) -> list[str]:
    """The table's header for ``results``: the breakdown (median/p99) and energy columns only where measured."""
    metrics, energy = _measured(results)
    return [*BASE_COLUMNS, *(f"{BREAKDOWN[m]} ms med/p99" for m in metrics), *(ENERGY[k] for k in energy), "speedup"]


def rows(results: list[dict]) -> list[list]:
    """One row per result, under :func:`columns` of the same results; "-" where a result lacks a figure."""
    metrics, energy = _measured(results)
    table = []
    for r in results:
        latency = r["latency_ms"]
        speedups = [v for k, v in r.items() if k.startswith("speedup_vs_")]
        breakdown = [f"{r[f'{m}_ms']['median']:.3f}/{r[f'{m}_ms']['p99']:.3f}" if f"{m}_ms" in r else "-"
                     for m in metrics]
        joules = [f"{r[key]:.1f}" if r.get(key) is not None else "-" for key in energy]
        table.append([r["label"], r["backend"], r["precision"], r["batch"], f"{latency['median']:.2f}",
                      f"{latency['p90']:.2f}", f"{latency['p99']:.2f}", f"{latency['mean']:.2f}",
                      f"{latency['cv'] * 100:.1f}", f"{r['throughput_qps']:.1f}", f"{r['images_per_s']:.1f}",
                      *breakdown, *joules, f"{speedups[0]:.2f}×" if speedups else "-"])
    return table


def to_csv(results: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in results:
        latency = r["latency_ms"]
        writer.writerow([r["label"], r["backend"], r["precision"], r["batch"], r.get("variant"), r.get("phi"),
                         r["mode"], *(latency[k] for k in ("min", "max", "mean", "median", "p90", "p95", "p99")),
                         latency["cv"], *(r.get(f"{metric}_ms", {}).get(k) for metric in BREAKDOWN
                                          for k in ("median", "p99")),
                         r["throughput_qps"], r["images_per_s"], *(r.get(key) for key in ENERGY),
                         r.get("speedup_vs_torch")])
    return buffer.getvalue()


def to_markdown(results: list[dict]) -> str:
    header = columns(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows(results)]
    return "\n".join(lines)


def series_name(result: dict) -> str:
    """The plot series of a result: what it runs (backend, precision, batch)."""
    return f"{result['backend']} {result['precision']} b{result['batch']}"


def plot(results: list[dict], path: Path) -> None:
    """Left: median latency vs φ, one line per backend/precision/batch. Right: throughput vs latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[str, list] = {}
    for r in results:
        series.setdefault(series_name(r), []).append(r)
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
