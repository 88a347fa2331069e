"""Running a sweep: check it, pick the executor (in this process or on Ray), report, and fit profiles."""
from __future__ import annotations

import time
from typing import Callable, Optional

from effedge.errors import EffedgeError
from effedge.fleet.device import device_fingerprint
from effedge.fleet.local import run_in_process
from effedge.fleet.plan import SWEEP_NMS
from effedge.fleet.results import fit_profiles
from effedge.fleet.spec import SweepSpec
from effedge.fleet.tracker import SweepInterrupted, SweepReport, SweepStatus, SweepTracker

__all__ = ["SweepInterrupted", "SweepReport", "SweepStatus", "check_fittable", "run_sweep"]


def check_fittable(spec: SweepSpec) -> None:
    """--fit writes each device's profile from its own results: two devices may not share one, and a profile
    is fitted only to graphs with the NMS tail it deploys (a sweep's have none)."""
    from effedge.plan.profiles import load_profile

    seen: dict[str, str] = {}
    for device in spec.devices:
        if device.profile in seen:
            raise EffedgeError(f"{spec.path}: devices {seen[device.profile]} and {device.name} share the profile "
                               f"{device.profile}; --fit fits one profile per device: give each device a profile "
                               "file of its own (profile: ./NAME.yaml)")
        seen[device.profile] = device.name
    for device in spec.devices:
        deployed = load_profile(device.profile).nms
        if deployed != SWEEP_NMS:
            raise EffedgeError(f"{spec.path}: device {device.name}'s profile {device.profile} deploys the {deployed} "
                               f"NMS tail, and a sweep measures graphs with NMS tail {SWEEP_NMS}; --fit fits a profile "
                               f"to what it deploys: set target.nms: {SWEEP_NMS} in it (the Detector then runs NMS), "
                               f"or fit it with `effedge bench --nms {deployed} --json` and `effedge profile fit`")


def run_sweep(spec: SweepSpec, *, ray: Optional[str] = None, fit: bool = False,
              progress: Callable[[SweepStatus], None] = lambda status: None,
              log: Callable[[str], None] = lambda message: None) -> SweepReport:
    """Run every cell not already cached: in this process (``ray=None``), or on Ray (``"local"`` starts a
    local cluster with one resource per device; ``"auto"`` or an address joins a running one). With ``fit``,
    each device's profile is fitted from its own results afterwards."""
    if fit:
        check_fittable(spec)
    if ray is not None:
        try:
            from effedge.fleet.ray_executor import run_on_ray
        except ModuleNotFoundError as exc:
            if exc.name != "ray":
                raise
            raise EffedgeError("--ray needs Ray: pip install 'effedge[fleet]' (or run without --ray, in this "
                               "process)") from exc
    tracker = SweepTracker(spec, fit=fit, progress=progress)
    executor = "in-process" if ray is None else f"ray ({ray})"
    start = time.perf_counter()
    try:
        if ray is None:  # every device is this machine
            tracker.resume({device.name: device_fingerprint(device.backend) for device in spec.devices})
            if tracker.jobs_to_run():
                run_in_process(tracker, log)
            else:
                log("every cell is cached: nothing to run")
        else:  # asks each device for its fingerprint first
            run_on_ray(tracker, ray, log)
    except KeyboardInterrupt:
        raise SweepInterrupted(f"interrupted: {tracker.done_count()} of {len(tracker.states)} cells ended (finished "
                               "ones are cached); run the sweep again to run the rest") from None
    finally:
        tracker.clean_up()
    report = tracker.report(executor, time.perf_counter() - start)
    if fit:
        report.fits = fit_profiles(spec, report, tracker)
    return report
