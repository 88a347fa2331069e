"""What the commands share: option lists, output helpers (JSON, tables, progress) and argument parsers."""
from __future__ import annotations

import json
from typing import Any

import click


# effedge.quantize.calibrators' CALIB_METHODS and DEFAULT_METHOD, spelled out so that --help needs no numpy
# (tests/test_calibrators.py checks they agree).
CALIB_METHODS = ("entropy", "max", "percentile")
DEFAULT_CALIB_METHOD = "percentile"
CALIB_METHOD_HELP = ("Activation ranges: percentile = the 99.99th percentile of |x| (best int8 mAP on the reference "
                     "model), max = the largest |x|, entropy = TensorRT's KL-divergence threshold.")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, allow_nan=False))  # strict JSON: no Infinity/NaN for scripts


def human(count: int | None, unit: str = "") -> str:
    if count is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= factor:
            return f"{count / factor:.2f}{suffix}{unit}"
    return f"{count}{unit}"


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped/logged: don't squeeze columns into 80 characters
        console = Console(width=200)
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "backbone", "levels") else "right")
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console.print(table)


def progress(message: str) -> None:
    click.echo(f"[effedge] {message}", err=True)


def variant_arg(variant: str | None, phi: float | None) -> str | float:
    if (variant is None) == (phi is None):
        raise click.UsageError("give --variant or --phi (one of them)")
    return variant if variant is not None else phi


def parse_dynamic_batch(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        low, opt, high = (int(part) for part in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not MIN:OPT:MAX, e.g. 1:4:8", param_hint="--dynamic-batch")
    return low, opt, high


def rich_progress(items, total: int, description: str):
    """A progress bar on stderr for long library loops (effedge.quantize.precision.Progress)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[effedge] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total or None)
        for item in items:
            yield item
            bar.advance(task)


def split_list(value: str | None, cast=str) -> list:
    return [cast(part.strip()) for part in value.split(",") if part.strip()] if value else []


_MODEL_OPTIONS = (
    click.option("--variant", help="b0..b7, d0..d7x."),
    click.option("--phi", type=float, help="Custom compound coefficient φ (0–7) instead of --variant."),
    click.option("--weights", help="Checkpoint: .pth file, URL, or known name (tf_efficientdet_d0, …)."),
    click.option("--num-classes", type=int, help="Classes of the head (default 90 for detectors, 1000 for "
                 "classifiers)."),
    click.option("--pad", type=click.Choice(["same", "symmetric"]), default="same", show_default=True,
                 help="Checkpoint layout: TF-ported (same) or PyTorch-trained (symmetric)."),
    click.option("--imgsz", type=int, help="Input size (square); default the variant's. Multiple of the largest "
                 "stride."),
    click.option("--batch", type=int, default=1, show_default=True, help="Static batch size."),
    click.option("--dynamic-batch", metavar="MIN:OPT:MAX", help="Dynamic batch instead of --batch, e.g. 1:4:8."),
)


def model_options(command):
    """The options that name and shape a model (export and compile take the same ones)."""
    for option in reversed(_MODEL_OPTIONS):
        command = option(command)
    return command
