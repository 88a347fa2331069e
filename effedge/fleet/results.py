"""A sweep's results for people and scripts: one table, CSV and plot over all devices; per-device profile fits.

The bench columns come from :mod:`effedge.bench.report`; the fleet adds device, node, attempt and status.
"""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Optional

from effedge.bench import report as bench_report
from effedge.io import atomic_write
from effedge.errors import EffedgeError
from effedge.fleet.spec import SweepSpec
from effedge.fleet.tracker import SweepReport, SweepTracker

COLUMNS = ["device", "model", "precision", "batch", "median ms", "p90 ms", "images/s", "node", "attempt", "status"]
FLEET_CSV_COLUMNS = ["cell", "device", "profile", "node", "ray_node_id", "attempt", "status", "cached", "error",
                     "artefact_sha256"]


def rows(report: SweepReport) -> list[list]:
    table = []
    for cell in report.cells:
        ok = cell["status"] != "failed"
        latency = cell.get("latency_ms", {})
        status = ("cached" if cell.get("cached") else "ok") if ok else f"failed: {cell['error']}"
        table.append([cell["device"], cell["variant"], cell["precision"], cell["batch"],
                      f"{latency['median']:.2f}" if ok else None, f"{latency['p90']:.2f}" if ok else None,
                      f"{cell['images_per_s']:.1f}" if ok else None, cell.get("node"), cell.get("attempt"), status])
    return table


def to_csv(report: SweepReport) -> str:
    """One row per cell: the fleet's columns, then :func:`effedge.bench.report.to_csv`'s (empty for a failed
    cell)."""
    measured = [c for c in report.cells if c["status"] != "failed"]
    bench_header, *bench_rows = list(csv.reader(io.StringIO(bench_report.to_csv(measured))))
    by_cell = {c["cell"]: row for c, row in zip(measured, bench_rows)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FLEET_CSV_COLUMNS + bench_header)
    for cell in report.cells:
        writer.writerow([cell.get(column) for column in FLEET_CSV_COLUMNS]
                        + by_cell.get(cell["cell"], [""] * len(bench_header)))
    return buffer.getvalue()


def plot(report: SweepReport, path: Path) -> None:
    """:func:`effedge.bench.report.plot` with one series per device, precision and batch."""
    measured = [{**c, "backend": f"{c['device']} ({c['backend']})"} for c in report.cells if c["status"] != "failed"]
    bench_report.plot(measured, path)


def write_outputs(report: SweepReport, csv_path: Optional[str] = None, plot_path: Optional[str] = None) -> None:
    if csv_path:
        atomic_write(Path(csv_path), to_csv(report))
    if plot_path:
        plot(report, Path(plot_path))


def fit_profiles(spec: SweepSpec, report: SweepReport, tracker: SweepTracker) -> dict:
    """Fit each device's profile from its own measured cells (``effedge profile fit``, per device)."""
    from effedge.plan.latency import fit_profile  # the one place the fleet fits a profile

    graphs = {meta["sha256"]: tracker.graph_path(job) for job, meta in tracker.artefacts.items()}
    fits = {}
    for device in spec.devices:
        measured = [c for c in report.cells if c["device"] == device.name and c["status"] != "failed"]
        if not measured:
            fits[device.name] = {"profile": device.profile, "fitted": None, "reason": "no measured cells"}
            continue
        points = []
        for cell in measured:
            graph = graphs.get(cell["artefact_sha256"])
            if graph is None:
                raise EffedgeError(f"the graph of {cell['cell']} is not on this machine; run the sweep with --fit "
                                   "again to fetch it")
            points.append({**cell, "target": str(graph)})  # the fit reads each graph's layers
        with tempfile.TemporaryDirectory() as tmp:
            results_file = Path(tmp) / f"{device.name}.json"
            results_file.write_text(json.dumps(points))
            fitted = fit_profile(device.profile, [str(results_file)])
        # per precision: the fit and each point's measured and reproduced latency; written to the user profiles
        fits[device.name] = {"profile": device.profile, "fitted": fitted["fits"], "written_to": fitted["written_to"]}
    return fits
