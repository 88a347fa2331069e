"""The ``effedge`` command line: parses arguments, calls the library, prints. No logic of its own.

One module per command family; ``options`` holds what they share."""
from effedge.cli import bench, build, cache, detect, doctor, models, package, plan, sweep  # noqa: F401  (registers the commands)
from effedge.cli.main import cli, main

__all__ = ["cli", "main"]
