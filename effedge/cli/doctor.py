"""effedge doctor: what this machine can build and run, and why not."""
from __future__ import annotations

import click

from effedge.cli.cache import size_text
from effedge.cli.main import cli
from effedge.cli.options import print_json


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(as_json: bool) -> None:
    """What this machine can do: component versions, GPU, backends and precisions, and why not.

    \b
    Example:
      effedge doctor
    """
    from effedge.pipeline.doctor import diagnose

    report = diagnose()
    if as_json:
        print_json(report)
        return
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v))
    click.echo(f"GPU: {report['gpu'] or 'none — ' + report['gpu_reason']}")
    for backend in report["backends"]:
        status = "available" if backend["available"] else "unavailable"
        click.echo(f"{backend['name']:12s} {status:12s} precisions: {', '.join(backend['precisions']) or '-'}"
                   + (f" — {backend['reason']}" if backend["reason"] else ""))
    cache, runs = report["cache"], report["runs"]
    click.echo(f"cache: {cache['root']} (from {cache['from']}): {size_text(cache['bytes'])} in {cache['entries']} "
               "entries (effedge cache list / clean)")
    click.echo(f"build folders in {runs['dir']}: {size_text(runs['bytes'])} ({runs['builds']} folders)")
