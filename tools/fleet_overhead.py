"""What Ray costs a fleet sweep on this machine (the figures in docs/fleet.md).

Starts a local cluster with one stand-in device resource and measures: start-up; the round trip of a device
task (no CPU, 1 of the device) against a plain call; the same task taking an artefact-sized graph from the
object store; queued-task throughput on one device; and the head's own processes (GCS, raylet, monitors):
memory and CPU time while those tasks ran.

    python tools/fleet_overhead.py [--tasks 200] [--artefact-mb 8]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def head_processes(session: str, exclude: set[int]) -> dict[int, str]:
    """The cluster's own daemons: processes whose command line names the session (workers excluded)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            command = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        argv = command.split()
        if session not in command or not argv:
            continue
        name = argv[0].rsplit("/", 1)[-1]
        if name.startswith("python"):  # a Python daemon: name it by its script
            name = next((part.rsplit("/", 1)[-1] for part in argv[1:] if part.endswith(".py")), name)
        if name != "default_worker.py":
            found[int(entry)] = name
    return found


def usage(pid: int) -> tuple[float, float]:
    """(resident MB, CPU seconds) of a process."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="Round trips and queued tasks to time.")
    parser.add_argument("--artefact-mb", type=float, default=8.0, help="Graph size (D0 fp16 is about 8 MB).")
    args = parser.parse_args()

    import ray

    figures: dict = {"load_average_before": os.getloadavg()}
    clock = time.perf_counter()
    ray.init(address="local", num_cpus=2, resources={"stand-in": 1}, include_dashboard=False, log_to_driver=False)
    figures["ray_init_s"] = time.perf_counter() - clock
    session = ray.get_runtime_context().get_session_name()
    daemons = head_processes(session, {os.getpid()})
    before = {pid: usage(pid) for pid in daemons}

    def cell(graph=None):
        return None if graph is None else len(graph)

    device_task = ray.remote(cell).options(num_cpus=0, resources={"stand-in": 1})
    ray.get(device_task.remote())  # a worker is started on first use: not part of the steady state

    clock = time.perf_counter()
    for _ in range(args.tasks):
        cell()
    figures["plain_call_us"] = (time.perf_counter() - clock) / args.tasks * 1e6

    trips = []
    for _ in range(args.tasks):
        clock = time.perf_counter()
        ray.get(device_task.remote())
        trips.append(time.perf_counter() - clock)
    figures["device_task_round_trip_ms"] = {"median": statistics.median(trips) * 1e3,
                                            "p90": sorted(trips)[int(0.9 * len(trips))] * 1e3}

    graph = os.urandom(int(args.artefact_mb * 2**20))
    clock = time.perf_counter()
    graph_ref = ray.put(graph)
    figures["put_artefact_ms"] = (time.perf_counter() - clock) * 1e3
    trips = []
    for _ in range(min(args.tasks, 50)):
        clock = time.perf_counter()
        ray.get(device_task.remote(graph_ref))
        trips.append(time.perf_counter() - clock)
    figures["device_task_with_artefact_ms"] = statistics.median(trips) * 1e3

    clock = time.perf_counter()
    ray.get([device_task.remote() for _ in range(args.tasks)])  # exclusive: they run one after another
    figures["queued_tasks_per_s_on_one_device"] = args.tasks / (time.perf_counter() - clock)

    after = {pid: usage(pid) for pid in daemons if os.path.exists(f"/proc/{pid}")}
    figures["head_daemons"] = {f"{daemons[pid]} ({pid})": {"rss_mb": round(after[pid][0], 1),
                                                            "cpu_s_during_tasks": round(after[pid][1] - before[pid][1], 2)}
                               for pid in after}
    figures["head_rss_mb_total"] = round(sum(rss for rss, _ in after.values()), 1)
    clock = time.perf_counter()
    ray.shutdown()
    figures["ray_shutdown_s"] = time.perf_counter() - clock
    figures["load_average_after"] = os.getloadavg()
    figures["tasks"] = args.tasks
    figures["artefact_mb"] = args.artefact_mb
    print(json.dumps(figures, indent=2, default=lambda v: round(v, 3)))


if __name__ == "__main__":
    main()
