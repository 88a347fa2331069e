"""The embedded executor: every stage in this process, one cell after another, on this machine.

Every device of the sweep is this machine here (stand-ins, or a one-device sweep run on the device itself);
the results have the same format as on Ray, with attempt 1 (a crash here ends the whole process).
"""
from __future__ import annotations

from typing import Callable

from effedge.fleet.device import run_device_stage
from effedge.fleet.host import run_host_stage
from effedge.fleet.plan import bench_settings_for
from effedge.fleet.tracker import SweepTracker, reason_of


def run_in_process(tracker: SweepTracker, log: Callable[[str], None]) -> None:
    for job in tracker.jobs_to_run():
        tracker.host_task_submitted(job)
        try:
            meta, payload = run_host_stage(job, tracker.keys[job], log)
        except Exception as exc:  # the sweep goes on with the other models; the reason is in the cells
            tracker.host_failed(job, reason_of(exc))
            continue
        tracker.host_done(job, meta, lambda: payload)
        settings = bench_settings_for(tracker.spec, job)
        for cell in tracker.open_cells(job):
            if tracker.is_final(cell):  # its device was given up meanwhile
                continue
            tracker.device_task_submitted(cell)
            tracker.cell_running(cell)
            try:
                result = run_device_stage(cell, payload, settings, tracker.run_id, log)
            except Exception as exc:  # a failing cell is recorded and the sweep goes on
                tracker.cell_failed(cell, reason_of(exc))
            else:
                tracker.cell_done(cell, result)
