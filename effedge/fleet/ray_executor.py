"""The Ray executor: host stages as CPU tasks, device stages as tasks holding the device's custom resource.

* A device is a Ray custom resource of capacity 1 named like the device (``ray start --address=HEAD
  --resources='{"orin-nx-16gb": 1}'``); every device task asks for 1 of it and no CPU, so two tasks never
  share a device and device nodes may offer no CPU at all (``--num-cpus=0``), which keeps host stages
  (torch, onnx) off them. Host tasks ask for 1 CPU.
* Transport: a host task returns the graph's bytes as its second return value; Ray keeps it in the object
  store of the node that compiled it and each device task that takes it pulls it to its own node, where the
  sha256 is checked. No shared file system is needed, and a lost copy is rebuilt from lineage (the host task
  re-runs, a compile-cache hit).
* Faults: Ray re-runs a task whose worker or node died (``max_retries``); application errors are not
  retried. The driver polls the cluster's resources: a device absent for ``device_wait_s`` has its open
  cells failed and its tasks cancelled. Ctrl-C cancels every outstanding task.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

import ray

from effedge.errors import EffedgeError
from effedge.fleet.plan import Cell, HostJob, bench_settings_for
from effedge.fleet.tracker import SweepTracker, reason_of

POLL_S = 0.5  # ray.wait timeout: how often progress and the cluster's devices are looked at
CONNECT_TIMEOUT_S = 5.0
FINGERPRINT_TIMEOUT_S = 30.0  # a present device that does not say what it runs in this time is measured again


def _host_task(job: HostJob, key: str) -> tuple[dict, dict]:
    from effedge.fleet.host import run_host_stage

    description, payload = run_host_stage(job, key)
    return {**description, "ray_node_id": ray.get_runtime_context().get_node_id()}, payload


def _device_task(cell: Cell, payload: dict, settings, run_id: str) -> dict:
    from effedge.fleet.device import run_device_stage

    context = ray.get_runtime_context()
    result = run_device_stage(cell, payload, settings, run_id)
    return {**result, "ray_node_id": context.get_node_id(), "ray_resources": context.get_assigned_resources()}


def _fingerprint_task(backend: str) -> dict:
    from effedge.fleet.device import device_fingerprint

    return device_fingerprint(backend)


def fingerprints(tracker: SweepTracker) -> dict[str, dict]:
    """Each present device's fingerprint, from a small task on it (it holds the device's resource)."""
    present = {name for name, amount in ray.cluster_resources().items() if amount >= 1}
    task = ray.remote(_fingerprint_task)
    refs = {task.options(resources={device.name: 1}, num_cpus=0, name=f"fingerprint {device.name}").remote(
        device.backend): device.name for device in tracker.spec.devices if device.name in present}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=FINGERPRINT_TIMEOUT_S) if refs else ([], [])
    for ref in late:
        ray.cancel(ref, force=True)
    found = {}
    for ref in ready:
        try:
            found[refs[ref]] = ray.get(ref)
        except Exception:  # its worker died: the device's cells are measured (and fail there if it is broken)
            pass
    return found


def _check_reachable(address: str) -> None:
    """Fail in seconds on a head that is not there (Ray itself keeps retrying for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EffedgeError(f"--ray {address!r}: give local, auto or the head's HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EffedgeError(f"cannot reach the Ray head at {address} ({exc.strerror or exc}); start it there with "
                           "`ray start --head`, or use --ray local") from exc


def connect(address: str, resources: dict[str, float]) -> bool:
    """Join or start Ray; True if this call started it (and so must shut it down)."""
    if ray.is_initialized():  # e.g. a test's cluster, or a caller that configured Ray itself
        return False
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address == "local":
        ray.init(address="local", num_cpus=os.cpu_count(), resources=resources, **options)
        return True
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise EffedgeError(f"cannot join the Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one "
                           "with `ray start --head`, or use --ray local") from exc
    return True


class _Driver:
    def __init__(self, tracker: SweepTracker):
        self.tracker = tracker
        self.faults = tracker.spec.faults
        self.host = ray.remote(_host_task).options(num_cpus=1, num_returns=2, max_retries=self.faults.retries)
        self.device = ray.remote(_device_task)
        self.meta_refs: dict = {}  # description ref -> job
        self.payload_refs: dict[HostJob, object] = {}
        self.device_refs: dict = {}  # result ref -> cell
        self.unsubmitted: dict[str, list[Cell]] = {d.name: [] for d in tracker.spec.devices}
        self.absent_since: dict[str, float] = {}
        self.ever_seen: set[str] = set()
        self.present: set[str] = set()
        self.last_poll = 0.0

    def run(self) -> None:
        try:
            self._submit_host_tasks()
            while self.meta_refs or self.device_refs or any(self.unsubmitted.values()):
                self._poll_devices()
                refs = list(self.meta_refs) + list(self.device_refs)
                if not refs:
                    time.sleep(POLL_S)
                    continue
                ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
                if ready:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    if ref in self.meta_refs:
                        self._host_finished(ref)
                    elif ref in self.device_refs:
                        self._device_finished(ref)
        except KeyboardInterrupt:
            self._cancel(list(self.meta_refs) + list(self.device_refs))
            raise

    def _submit_host_tasks(self) -> None:
        for job in self.tracker.jobs_to_run():
            meta_ref, payload_ref = self.host.remote(job, self.tracker.keys[job])
            self.tracker.host_task_submitted(job)
            self.meta_refs[meta_ref] = job
            self.payload_refs[job] = payload_ref

    def _poll_devices(self) -> None:
        """Look at the cluster's devices (once a second): fail the open cells of devices absent for
        ``device_wait_s``; submit the cells of those present."""
        now = time.monotonic()
        if now - self.last_poll >= 1.0:
            self.last_poll = now
            self.present = {name for name, amount in ray.cluster_resources().items() if amount >= 1}
            waiting = self.tracker.devices_with_open_cells()
            for name in self.unsubmitted:
                if name not in waiting or name in self.present:
                    self.absent_since.pop(name, None)
                    self.ever_seen.update({name} & self.present)
                    continue
                since = self.absent_since.setdefault(name, now)
                if now - since >= self.faults.device_wait_s:
                    why = ("left the cluster (its node died or stopped)" if name in self.ever_seen else
                           "never joined the cluster")
                    self._give_up(name, f"device {name} {why} and was not back within {self.faults.device_wait_s:g} "
                                        f"s; start its node with ray start --address=HEAD --resources='{{\"{name}\": 1}}'")
        for name in self.present:
            for cell in self.unsubmitted.get(name, []):
                self._submit_cell(cell)
            if name in self.unsubmitted:
                self.unsubmitted[name] = []

    def _submit_cell(self, cell: Cell) -> None:
        if self.tracker.is_final(cell):  # e.g. its device was given up
            return
        options = dict(resources={cell.device.name: 1}, num_cpus=0, max_retries=self.faults.retries,
                       retry_exceptions=False, name=f"bench {cell.id}")
        ref = self.device.options(**options).remote(cell, self.payload_refs[cell.job],
                                                    bench_settings_for(self.tracker.spec, cell.job),
                                                    self.tracker.run_id)
        self.tracker.device_task_submitted(cell)
        self.device_refs[ref] = cell

    def _host_finished(self, ref) -> None:
        job = self.meta_refs.pop(ref)
        try:
            meta = ray.get(ref)
        except Exception as exc:  # the job's cells fail with the reason; the sweep goes on
            self.tracker.host_failed(job, reason_of(exc))
            self._release(job)
            return
        self.tracker.host_done(job, meta, lambda: ray.get(self.payload_refs[job]))
        for cell in self.tracker.open_cells(job):  # those not measured before on this device
            self.unsubmitted[cell.device.name].append(cell)
        self._release(job)
        self._poll_devices()

    def _device_finished(self, ref) -> None:
        cell = self.device_refs.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:
            given_up = self.tracker.cell_failed(cell, reason_of(exc))
            if given_up:
                self._cancel([r for r, c in self.device_refs.items() if c in given_up])
        else:
            self.tracker.cell_done(cell, result)
        self._release(cell.job)

    def _give_up(self, device: str, reason: str) -> None:
        cells = self.tracker.give_up(device, reason)
        self.unsubmitted[device] = []
        self._cancel([r for r, c in self.device_refs.items() if c in cells])
        for job in {c.job for c in cells}:
            self._release(job)

    def _cancel(self, refs: list) -> None:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished, or its worker already gone: nothing left to stop
                pass
            self.device_refs.pop(ref, None)
            self.meta_refs.pop(ref, None)

    def _release(self, job: HostJob) -> None:
        """Drop the driver's reference to a graph no open cell needs, so the object store can free it."""
        if job in self.payload_refs and job not in self.meta_refs.values() and not any(
                c.job == job for c in self.device_refs.values()) and not any(
                c.job == job for cells in self.unsubmitted.values() for c in cells):
            del self.payload_refs[job]


def run_on_ray(tracker: SweepTracker, address: str, log: Callable[[str], None]) -> None:
    started = connect(address, {device.name: 1 for device in tracker.spec.devices})
    try:
        offered = {name for name, amount in ray.cluster_resources().items() if amount >= 1}
        log(f"Ray: {sum(n['Alive'] for n in ray.nodes())} node(s) alive; devices present: "
            + (", ".join(d.name for d in tracker.spec.devices if d.name in offered) or "none yet"))
        tracker.resume(fingerprints(tracker))
        if not tracker.jobs_to_run():
            log("every cell is cached: nothing to run")
            return
        _Driver(tracker).run()
    finally:
        if started:
            ray.shutdown()
