"""effedge package: a deployment bundle from a build directory."""
from __future__ import annotations

import click

from effedge.cli.main import cli
from effedge.cli.options import print_json


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--format", "bundle_format", type=click.Choice(["triton"]), required=True,
              help="triton: a model repository NAME/config.pbtxt + NAME/1/model.plan|model.onnx.")
@click.option("--out", type=click.Path(file_okay=False), default="model_repository", show_default=True,
              help="Folder the bundle is written into.")
@click.option("--name", help="Model name [default: the build's variant].")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def package(build_dir, bundle_format, out, name, as_json) -> None:
    """Package a build directory (read through its build.json) for a serving runtime.

    \b
    Examples:
      effedge package runs/d0 --format triton
      effedge package runs/d0 --format triton --out /models --name detector --json
    """
    from effedge.package import package_triton

    summary = package_triton(build_dir, out, name)
    if as_json:
        print_json(summary)
        return
    click.echo(f"{summary['model']}: Triton {summary['platform']} model ({', '.join(summary['files'])})")
