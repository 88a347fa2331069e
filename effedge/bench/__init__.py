"""Benchmarks as trtexec reports them, and more: the timing harness, what is measured (targets, end-to-end,
baselines), reports (table, JSON, CSV, Markdown, plots) and Jetson energy. Compiling a matrix to bench is
orchestration: :func:`effedge.pipeline.bench_matrix`."""
from effedge.bench.harness import BenchSettings, Iteration, Measurement, run, summarize
from effedge.bench.targets import bench_baselines, bench_one, resolve_target

__all__ = ["BenchSettings", "Iteration", "Measurement", "bench_baselines", "bench_one", "resolve_target", "run",
           "summarize"]
