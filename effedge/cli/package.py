"""effedge package: a deployment bundle from a build directory."""
from __future__ import annotations

import click

from effedge.cli.main import cli
from effedge.cli.options import print_json

DEFAULT_OUT = {"triton": "model_repository", "deepstream": "deepstream"}


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--format", "bundle_format", type=click.Choice(["triton", "deepstream"]), required=True,
              help="triton: a model repository NAME/config.pbtxt + NAME/1/model.plan|model.onnx. deepstream: "
                   "NAME/ with an nvinfer config, labels.txt, the model and the bbox parser's sources.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder the bundle is written into [default: model_repository (triton), deepstream].")
@click.option("--name", help="Model name [default: the build's variant].")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def package(build_dir, bundle_format, out, name, as_json) -> None:
    """Package a build directory (read through its build.json) for a serving runtime.

    \b
    Examples:
      effedge package runs/d0 --format triton
      effedge package runs/d0 --format triton --out /models --name detector --json
      effedge package runs/lite0 --format deepstream --out bundles
    """
    from effedge.package import package_deepstream, package_triton

    out = out or DEFAULT_OUT[bundle_format]
    if bundle_format == "deepstream":
        summary = package_deepstream(build_dir, out, name)
        if as_json:
            print_json(summary)
            return
        click.echo(f"{summary['bundle']}: DeepStream bundle ({summary['parse_function']}); build its parser with:")
        for line in summary["build_parser"]:
            click.echo(f"  (cd {summary['bundle']} && {line})")
        return
    summary = package_triton(build_dir, out, name)
    if as_json:
        print_json(summary)
        return
    click.echo(f"{summary['model']}: Triton {summary['platform']} model ({', '.join(summary['files'])})")
