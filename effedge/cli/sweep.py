"""effedge sweep: every model × precision × batch on every device, in-process or on Ray."""
from __future__ import annotations

import sys

import click

from effedge.cli.main import cli
from effedge.cli.options import InputFile, image_size_option, print_json, progress, table


@cli.command("sweep")
@click.argument("sweep_file", type=InputFile("yaml"))
@click.option("--ray", "ray_address", metavar="auto|local|ADDRESS",
              help="Run on Ray: local (a cluster on this machine, one resource per device), auto (the running "
                   "cluster) or a head ADDRESS. Default: in this process, on this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the results as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write latency and throughput plots (PNG).")
@click.option("--fit", is_flag=True, help="Fit every device's profile from its own results (each device needs a "
              "profile of its own that deploys tail-free graphs: target.nms: none).")
@image_size_option("Every model at this input size (square) instead of the sweep file's image_size (or each "
                   "model's own); a multiple of every model's largest stride.")
def sweep_command(sweep_file, ray_address, as_json, csv_path, plot_path, fit, imgsz) -> None:
    """Measure every model × precision × batch of SWEEP_FILE on every device it names.

    \b
    Only cells not measured before run (results are cached by artefact, device and bench settings).
    Exit code 1 when a cell failed, 130 on Ctrl-C (finished cells stay cached).
    \b
    Examples:
      effedge sweep examples/sweep-local.yaml
      effedge sweep examples/sweep-local.yaml --ray local --json
      effedge sweep examples/sweep-local.yaml --imgsz 256 --fit
      effedge sweep fleet.yaml --ray auto --csv fleet.csv --plot fleet.png --fit
    """
    from effedge import fleet

    spec = fleet.load_sweep(sweep_file)
    if imgsz:
        spec = fleet.with_image_size(spec, imgsz)
    try:
        with fleet.console_progress() as bar:
            report = fleet.run_sweep(spec, ray=ray_address, fit=fit, progress=bar, log=progress)
    except KeyboardInterrupt as exc:
        click.echo(f"error: {exc or 'interrupted'}", err=True)
        sys.exit(130)
    fleet.write_outputs(report, csv_path, plot_path)
    if as_json:
        print_json(report.to_json())
    else:
        table(f"effedge sweep {sweep_file} ({report.executor}, {report.wall_s:.1f} s)", fleet.COLUMNS,
              fleet.rows(report))
        for device, result in report.fits.items():
            fitted = result["fitted"]
            click.echo(f"fitted {result['profile']} ({device}) for " + ", ".join(
                f"{precision} on {len(fit['points'])} points" for precision, fit in fitted.items())
                + f": {result['written_to']}" if fitted else f"{device}: not fitted ({result['reason']})")
    if report.failed:
        click.echo(f"error: {len(report.failed)} of {len(report.cells)} cells failed (reasons in the results)",
                   err=True)
        sys.exit(1)
