"""The host stage: export, simplify and precision in the graph, once per model, on a CPU node.

Runs :func:`effedge.pipeline.compile.compile_model` into a build directory of the node's cache named by the job's
key, so a repeated job is a cache hit that only verifies hashes. Returns a small description (for the
driver's ledger) and the payload the devices need: the precision graph's bytes, its sha256 and the build
manifest (which lets a Jetson build an engine without the onnx package).
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

from effedge.fleet.plan import HostJob, fleet_dir


def build_dir(job: HostJob, key: str) -> Path:
    name = job.label.replace(" ", "-").replace("@", "-")
    return fleet_dir() / "builds" / f"{name}-{key[:16]}"


def device_manifest(manifest: dict, file: str) -> dict:
    """The build manifest as a device sees it: only the shipped graph is an artefact there."""
    shipped = dict(manifest)
    shipped["artifacts"] = {file: manifest["artifacts"][file]}
    shipped["compile"] = {**manifest["compile"], "deployable": file}
    return shipped


def run_host_stage(job: HostJob, key: str, log: Callable[[str], None] = lambda message: None) -> tuple[dict, dict]:
    """(description, payload) of ``job``'s artefact, compiled here or found in this node's cache."""
    from effedge.pipeline.compile import compile_model

    start = time.perf_counter()
    out = build_dir(job, key)
    manifest = compile_model(job.compile_config(), out, log=log)
    file = manifest["compile"]["deployable"]
    sha256 = manifest["artifacts"][file]["sha256"]
    data = (out / file).read_bytes()  # its sha256 is checked where it lands
    description = {"job": job.label, "host_key": key, "sha256": sha256, "file": file, "bytes": len(data),
                   "build_dir": str(out), "host": platform.node(), "cache_hit": manifest["compile"]["cache_hit"],
                   "seconds": round(time.perf_counter() - start, 3)}
    payload = {"sha256": sha256, "file": file, "data": data, "manifest": device_manifest(manifest, file)}
    return description, payload
