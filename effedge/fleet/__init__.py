"""Fleet sweeps: every model × precision × batch measured on every device, in-process or on Ray.

Ray is optional (``pip install effedge[fleet]``) and imported only by the Ray executor.
"""
from effedge.fleet.plan import Cell, FleetCache, HostJob, make_plan
from effedge.fleet.progress import console_progress
from effedge.fleet.results import COLUMNS, rows, to_csv, write_outputs
from effedge.fleet.spec import DeviceSpec, FaultPolicy, SweepSpec, SweepSpecError, load_sweep, with_image_size
from effedge.fleet.sweep import SweepInterrupted, SweepReport, SweepStatus, run_sweep

__all__ = ["COLUMNS", "Cell", "DeviceSpec", "FaultPolicy", "FleetCache", "HostJob", "SweepInterrupted",
           "SweepReport", "SweepSpec", "SweepSpecError", "SweepStatus", "console_progress", "load_sweep",
           "make_plan", "rows", "run_sweep", "to_csv", "with_image_size", "write_outputs"]
