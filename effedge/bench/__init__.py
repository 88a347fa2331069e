"""Benchmarks as trtexec reports them, and more: the timing harness, what is measured (targets, end-to-end,
matrices, baselines), reports (table, JSON, CSV, Markdown, plots) and Jetson energy."""
from effedge.bench.harness import BenchSettings, Iteration, Measurement, run, summarize
from effedge.bench.targets import bench_matrix, bench_one, resolve_target

__all__ = ["BenchSettings", "Iteration", "Measurement", "bench_matrix", "bench_one", "resolve_target", "run",
           "summarize"]
