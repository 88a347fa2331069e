"""The sweep's progress on stderr: a live per-device table on a terminal, one line per event otherwise."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from effedge.fleet.tracker import SweepStatus

REFRESH_S = 0.25


def _table(status: SweepStatus):
    from rich.table import Table

    table = Table(title=f"effedge sweep: host stages {status.host_done}/{status.host_total}",
                  caption=status.event or None)
    for column in ("device", "done", "cached", "running", "waiting", "failed", "total"):
        table.add_column(column, justify="left" if column == "device" else "right")
    for name, counts in status.devices.items():
        table.add_row(name, *(str(v) for v in (counts.done, counts.cached, counts.running, counts.waiting,
                                               counts.failed, counts.total)))
    return table


def _line(status: SweepStatus) -> str:
    counts = ", ".join(f"{name} {c.done + c.cached}/{c.total}" + (f" ({c.failed} failed)" if c.failed else "")
                       for name, c in status.devices.items())
    return f"[effedge] {status.event} [{counts}]"


@contextlib.contextmanager
def console_progress() -> Iterator[Callable[[SweepStatus], None]]:
    """A callback for :func:`effedge.fleet.run_sweep`'s ``progress``."""
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda status: console.print(_line(status), markup=False, highlight=False, soft_wrap=True)
        return
    shown = {"at": 0.0, "latest": None}
    with Live(console=console, transient=False, auto_refresh=False) as live:
        def show(status: SweepStatus) -> None:
            shown["latest"] = status
            if time.monotonic() - shown["at"] >= REFRESH_S:
                live.update(_table(status), refresh=True)
                shown["at"] = time.monotonic()

        try:
            yield show
        finally:
            if shown["latest"] is not None:  # the last state, even if it came within the refresh interval
                live.update(_table(shown["latest"]), refresh=True)
