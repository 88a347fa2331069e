"""The driver's side of a sweep, shared by both executors and the results: which work is left, what each cell
became, progress. (Its own module so that the executors and :mod:`effedge.fleet.results` import it, and
:mod:`effedge.fleet.sweep`, which starts them, imports them: no module imports one that imports it back.)

Every cell ends exactly once, as ``done`` (measured now, then cached), ``cached`` (measured by an earlier
run of the same artefact, device and bench settings) or ``failed`` (with the reason); a second outcome for
a cell that already ended is ignored, so a retried or cancelled task can never duplicate a row.
"""
from __future__ import annotations

import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from effedge.io import atomic_write, sha256_file
from effedge.errors import EffedgeError
from effedge.fleet.plan import Cell, FleetCache, HostJob, bench_settings_for, fleet_dir, make_plan, result_key
from effedge.fleet.spec import SweepSpec

FINAL = ("done", "cached", "failed")


def reason_of(exc: BaseException) -> str:
    """One line for a failed stage: an EffedgeError's message, else the exception's type and first line."""
    while isinstance(getattr(exc, "cause", None), BaseException):  # Ray's RayTaskError wraps the task's own
        exc = exc.cause
    if isinstance(exc, EffedgeError):
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C: outstanding tasks were cancelled; finished cells stay in the cache, no output file was written."""


@dataclass
class DeviceStatus:
    total: int = 0
    done: int = 0
    cached: int = 0
    running: int = 0
    failed: int = 0

    @property
    def waiting(self) -> int:
        return self.total - self.done - self.cached - self.running - self.failed


@dataclass
class SweepStatus:
    """What a progress display shows: cells per device, host stages, and the latest event."""

    devices: dict[str, DeviceStatus]
    host_done: int
    host_total: int
    event: str = ""


@dataclass
class SweepReport:
    sweep: str
    executor: str
    run_id: str
    wall_s: float
    cells: list[dict]
    stats: dict
    fits: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.cells if c["status"] == "failed"]

    def to_json(self) -> dict:
        return {"sweep": self.sweep, "executor": self.executor, "run_id": self.run_id, "wall_s": self.wall_s,
                "stats": self.stats, "fits": self.fits, "cells": self.cells}


@dataclass
class _CellState:
    cell: Cell
    status: str = "waiting"  # waiting | ready (host done, device task queued) | running | done | cached | failed
    result: Optional[dict] = None


class SweepTracker:
    def __init__(self, spec: SweepSpec, *, fit: bool = False, cache: Optional[FleetCache] = None,
                 progress: Callable[[SweepStatus], None] = lambda status: None):
        self.spec = spec
        self.fit = fit
        self.cache = cache or FleetCache()
        self.progress = progress
        self.run_id = uuid.uuid4().hex[:12]
        self.jobs, cells = make_plan(spec)
        self.keys = {job: job.key() for job in self.jobs}
        self.states = {cell.id: _CellState(cell) for cell in cells}
        self.artefacts: dict[HostJob, dict] = {}
        self.host_finished: set[HostJob] = set()
        self.streak: dict[str, int] = defaultdict(int)
        self.stats = {"host_tasks": 0, "device_tasks": 0, "cells": len(cells), "cached": 0, "done": 0, "failed": 0}
        self.fingerprints: dict[str, dict] = {}  # by device: what its device stage reports now (resume)
        self.host_total = len(self.jobs)

    def resume(self, fingerprints: dict[str, dict]) -> None:
        """Serve the cells measured before from the cache: those of an artefact in the ledger whose device
        reports the same ``fingerprints`` (software, power mode) as then. A device not in ``fingerprints``
        (not reachable now) is measured again."""
        self.fingerprints = dict(fingerprints)
        for job in self.jobs:
            meta = self.cache.artefact(self.keys[job])
            if meta is None:
                continue
            self.artefacts[job] = meta
            for state in self.cells_of(job):
                result = self._cached_result(meta["sha256"], state.cell)
                if result is not None:
                    self._serve_cached(state, result)
        self.host_total = len(self.jobs_to_run())

    def _cached_result(self, artefact_sha256: str, cell: Cell) -> Optional[dict]:
        fingerprint = self.fingerprints.get(cell.device.name)
        if fingerprint is None:
            return None
        return self.cache.result(result_key(artefact_sha256, cell.device, bench_settings_for(self.spec, cell.job),
                                            fingerprint))

    def _serve_cached(self, state: _CellState, result: dict) -> None:
        # the measurement as it was made; the profile is this sweep's (it is not part of the key)
        state.status, state.result = "cached", {**result, "cached": True, "profile": state.cell.device.profile}
        self.stats["cached"] += 1

    # --- what is left --------------------------------------------------------------------------------------

    def cells_of(self, job: HostJob) -> list[_CellState]:
        return [s for s in self.states.values() if s.cell.job == job]

    def open_cells(self, job: HostJob) -> list[Cell]:
        return [s.cell for s in self.cells_of(job) if s.status not in FINAL]

    def graph_path(self, job: HostJob) -> Optional[Path]:
        """The job's graph on this machine (for --fit), if it is here and intact."""
        meta = self.artefacts.get(job)
        if meta is None:
            return None
        for path in (Path(meta["build_dir"]) / meta["file"], fleet_dir() / "artefacts" / meta["sha256"] / meta["file"]):
            if path.is_file() and sha256_file(path) == meta["sha256"]:
                return path
        return None

    def jobs_to_run(self) -> list[HostJob]:
        """Jobs with open cells, and (for --fit) jobs whose graph this machine lacks, to fetch it."""
        return [job for job in self.jobs if self.open_cells(job) or (self.fit and self.graph_path(job) is None)]

    def devices_with_open_cells(self) -> set[str]:
        return {s.cell.device.name for s in self.states.values() if s.status not in FINAL}

    def is_final(self, cell: Cell) -> bool:
        return self.states[cell.id].status in FINAL

    # --- events ---------------------------------------------------------------------------------------------

    def host_task_submitted(self, job: HostJob) -> None:
        self.stats["host_tasks"] += 1

    def device_task_submitted(self, cell: Cell) -> None:
        self.stats["device_tasks"] += 1

    def host_done(self, job: HostJob, meta: dict, fetch_payload: Callable[[], dict]) -> None:
        """Record the artefact in the ledger; for --fit, keep a copy of a graph compiled on another node."""
        self.artefacts[job] = meta
        self.host_finished.add(job)
        self.cache.record_artefact(self.keys[job], meta)
        if self.fit and self.graph_path(job) is None:
            payload = fetch_payload()
            local = fleet_dir() / "artefacts" / meta["sha256"] / meta["file"]
            local.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(local, payload["data"])
        for cell in self.open_cells(job):
            result = self._cached_result(meta["sha256"], cell)
            if result is not None:  # the same artefact was measured on this device before
                self._serve_cached(self.states[cell.id], result)
            elif self.states[cell.id].status == "waiting":
                self.states[cell.id].status = "ready"
        self._update(f"compiled {job.label}" + (" (cache hit)" if meta.get("cache_hit") else ""))

    def host_failed(self, job: HostJob, reason: str) -> None:
        self.host_finished.add(job)
        for cell in self.open_cells(job):
            self._fail(cell, f"host stage failed: {reason}")
        self._update(f"host stage of {job.label} failed: {reason}")

    def cell_running(self, cell: Cell) -> None:
        self.states[cell.id].status = "running"
        self._update(f"{cell.id}: running")

    def cell_done(self, cell: Cell, result: dict) -> None:
        state = self.states[cell.id]
        if state.status in FINAL:
            return
        if result.get("cell") != cell.id or result.get("device") != cell.device.name:
            raise EffedgeError(f"the result for {cell.id} came back as {result.get('cell')!r} on "
                               f"{result.get('device')!r}; this is a bug in effedge's fleet executor")
        self.cache.record_result(result)
        state.status, state.result = "done", {**result, "cached": False}
        self.stats["done"] += 1
        self.streak[cell.device.name] = 0
        self._update(f"{cell.id}: done (attempt {result['attempt']}, "
                     f"median {result['latency_ms']['median']:.2f} ms)")

    def cell_failed(self, cell: Cell, reason: str) -> list[Cell]:
        """Mark ``cell`` failed; when its device has now failed too often in a row, give the device up and
        return its other open cells (marked failed too; the executor cancels their tasks)."""
        if self.is_final(cell):
            return []
        self._fail(cell, reason)
        device = cell.device.name
        self.streak[device] += 1
        self._update(f"{cell.id}: failed: {reason}")
        limit = self.spec.faults.max_consecutive_failures
        if self.streak[device] < limit:
            return []
        return self.give_up(device, f"not run: {device} failed {limit} cells in a row (last: {reason})")

    def give_up(self, device: str, reason: str) -> list[Cell]:
        cells = [s.cell for s in self.states.values() if s.cell.device.name == device and s.status not in FINAL]
        for cell in cells:
            self._fail(cell, reason)
        if cells:
            self._update(f"{device}: {reason}")
        return cells

    def _fail(self, cell: Cell, reason: str) -> None:
        from effedge.arch.scaling import resolve

        job = cell.job
        self.states[cell.id].status = "failed"
        self.states[cell.id].result = {
            "cell": cell.id, "device": cell.device.name, "profile": cell.device.profile, "label": cell.id,
            "variant": resolve(job.variant).name, "precision": job.precision, "batch": job.batch,
            "backend": cell.device.backend, "status": "failed", "error": reason, "node": None, "attempt": None,
            "cached": False}
        self.stats["failed"] += 1

    # --- progress and the report ---------------------------------------------------------------------------

    def status(self, event: str = "") -> SweepStatus:
        devices = {d.name: DeviceStatus() for d in self.spec.devices}
        ready = defaultdict(int)
        for state in self.states.values():
            counts = devices[state.cell.device.name]
            counts.total += 1
            if state.status in ("done", "cached", "running", "failed"):
                setattr(counts, state.status, getattr(counts, state.status) + 1)
            elif state.status == "ready":
                ready[state.cell.device.name] += 1
        for name, count in ready.items():  # a device runs one task at a time: with work ready, it runs one
            devices[name].running = max(devices[name].running, min(1, count))
        return SweepStatus(devices, len(self.host_finished), self.host_total, event)

    def _update(self, event: str) -> None:
        self.progress(self.status(event))

    def done_count(self) -> int:
        return sum(s.status in FINAL for s in self.states.values())

    def report(self, executor: str, wall_s: float) -> SweepReport:
        cells = [s.result for s in self.states.values()]
        missing = [s.cell.id for s in self.states.values() if s.result is None]
        if missing:  # every executor ends every cell; an open one here is a bug, not a user error
            raise RuntimeError(f"sweep ended with cells that never finished: {', '.join(missing)}")
        return SweepReport(str(self.spec.path), executor, self.run_id, round(wall_s, 3), cells, dict(self.stats))

    def clean_up(self) -> None:
        """The attempt logs of this run on this machine (device nodes keep theirs: a few bytes a cell)."""
        shutil.rmtree(fleet_dir() / "attempts" / self.run_id, ignore_errors=True)
