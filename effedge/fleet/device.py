"""The device stage: engine build and bench on the machine that holds the device.

Needs only the device-side install (numpy, the runtime of the device's backend, TensorRT + cuda-python on a
Jetson): no torch, no onnx. The graph arrives as bytes with its sha256 and build manifest, is checked and
written into ``fleet/devices/<device>/<sha256>/`` of this node's cache; a TensorRT device builds its engine
there (engines are built on the device they run on) and reuses it while graph and TensorRT version match.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from effedge.io import atomic_write, sha256_file, write_json
from effedge.bench.harness import BenchSettings
from effedge.errors import EffedgeError
from effedge.fleet.plan import Cell, fleet_dir, result_key
from effedge.io import MANIFEST, read_manifest
from effedge.provenance import tool_versions


def _nvidia_gpu() -> Optional[dict]:
    """Name, compute capability and driver of the first NVIDIA GPU, from nvidia-smi (absent on a CPU node)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = [field.strip() for field in output.strip().splitlines()[0].split(",")] if output.strip() else []
    return dict(zip(("name", "compute_capability", "driver"), fields)) if len(fields) == 3 else None


def _first_line(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def device_fingerprint(backend: str) -> dict:
    """The device's software and mode, as far as this node can read them: the runtime's version (TensorRT, or
    ONNX Runtime and the CPU model), the GPU (name, compute capability, driver), the L4T release (which fixes
    the JetPack) and the power mode. A measurement counts only under the fingerprint it was taken with: after
    an upgrade, a driver change or another power mode the device is measured again."""
    from effedge.bench.harness import jetson_state

    cpu = next((line.split(":", 1)[1].strip() for line in (Path("/proc/cpuinfo").read_text().splitlines()
                if Path("/proc/cpuinfo").is_file() else []) if line.startswith("model name")), platform.processor())
    runtime = "tensorrt" if backend == "tensorrt" else "onnxruntime"
    return {"backend": backend, runtime: tool_versions()[runtime], "gpu": _nvidia_gpu(),
            "l4t": _first_line("/etc/nv_tegra_release"), "power_mode": jetson_state().get("power_mode"),
            "cpu": cpu or platform.machine()}


def attempts_file(run_id: str, cell: Cell) -> Path:
    return fleet_dir() / "attempts" / run_id / f"{cell.slug}.jsonl"


def record_attempt(run_id: str, cell: Cell) -> int:
    """Append this attempt to the cell's log on this node and return its number (1 for the first).

    Ray re-runs a task whose worker or node died but does not tell the task which attempt it is; the log
    survives the worker, and a device's tasks always run on the node that holds the device."""
    path = attempts_file(run_id, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    attempt = (len(path.read_text().splitlines()) if path.is_file() else 0) + 1
    with open(path, "a") as log:
        log.write(json.dumps({"attempt": attempt, "pid": os.getpid(), "node": platform.node(),
                              "started": time.time()}) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return attempt


def materialize(payload: dict, workdir: Path) -> Path:
    """Write the shipped graph and its manifest into ``workdir`` (kept if already there and intact)."""
    source = workdir / payload["file"]
    if source.is_file() and (workdir / MANIFEST).is_file() and sha256_file(source) == payload["sha256"]:
        return source
    if hashlib.sha256(payload["data"]).hexdigest() != payload["sha256"]:
        raise EffedgeError(f"the graph {payload['file']} arrived damaged (sha256 mismatch); run the sweep again")
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write(source, payload["data"])
    write_json(workdir / MANIFEST, payload["manifest"])
    return source


def engine_for(source: Path, log: Callable[[str], None]) -> tuple[Path, bool]:
    """(engine, built now): the device's TensorRT engine of ``source``, built unless an intact one of the same
    graph and TensorRT version is already there."""
    from effedge.pipeline.compile import build_engine_file

    engine = source.with_suffix(".engine")
    manifest = read_manifest(source.parent)
    entry = manifest.get("engines", {}).get(engine.name, {})
    recorded = manifest.get("artifacts", {}).get(engine.name, {})
    if (engine.is_file() and entry.get("source", {}).get("sha256") == manifest["artifacts"][source.name]["sha256"]
            and entry.get("version") == tool_versions()["tensorrt"]
            and sha256_file(engine) == recorded.get("sha256")):
        return engine, False
    build_engine_file(source, engine, backend="tensorrt", log=log)
    return engine, True


def run_device_stage(cell: Cell, payload: dict, settings: BenchSettings, run_id: str,
                     log: Callable[[str], None] = lambda message: None) -> dict:
    """Build (TensorRT) and bench ``cell`` on this node; returns the bench result with the fleet's fields."""
    from effedge.bench.targets import bench_one

    attempt = record_attempt(run_id, cell)
    fingerprint = device_fingerprint(cell.device.backend)
    workdir = fleet_dir() / "devices" / cell.device.name / payload["sha256"][:24]
    target = materialize(payload, workdir)
    engine = None
    if cell.device.backend == "tensorrt":
        clock = time.perf_counter()
        target, built = engine_for(target, log)
        engine = {"file": target.name, "built": built, "seconds": round(time.perf_counter() - clock, 2)}
    log(f"benchmarking {cell.id} (attempt {attempt})")
    result = bench_one(target, read_manifest(workdir), cell.device.backend, settings, label=cell.id)
    return {**result, "cell": cell.id, "device": cell.device.name, "profile": cell.device.profile,
            "node": platform.node(), "attempt": attempt, "status": "ok", "artefact_sha256": payload["sha256"],
            "device_fingerprint": fingerprint, "result_key": result_key(payload["sha256"], cell.device, settings,
                                                                        fingerprint),
            "run_id": run_id, "engine": engine}
