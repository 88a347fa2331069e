"""What the commands share: option lists, output helpers (JSON, tables, progress) and argument parsers."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click


# effedge.quantize.calibrators' CALIB_METHODS and DEFAULT_METHOD, spelled out so that --help needs no numpy
# (tests/test_calibrators.py checks they agree).
CALIB_METHODS = ("entropy", "max", "percentile")
DEFAULT_CALIB_METHOD = "percentile"
CALIB_METHOD_HELP = ("Activation ranges: percentile = the 99.99th percentile of |x| (best int8 mAP on the reference "
                     "model), max = the largest |x|, entropy = TensorRT's KL-divergence threshold.")


def qad_options(command):
    """--qad, --qad-steps, --qad-lr with effedge.quantize.qad's defaults (that module imports torch lazily)."""
    from effedge.quantize.qad import DEFAULT_LR, DEFAULT_STEPS

    command = click.option("--qad-lr", type=FiniteFloatRange(0, 1, min_open=True), default=DEFAULT_LR, show_default=True,
                           help="--qad: Adam learning rate of the fine-tuning.")(command)
    command = click.option("--qad-steps", type=click.IntRange(1), default=DEFAULT_STEPS, show_default=True,
                           help="--qad: fine-tuning steps (one calibration batch each).")(command)
    return click.option("--qad", is_flag=True, help="int8/mixed: after calibration, fine-tune the fake-quantized "
                        "model to reproduce fp32's outputs on the calibration images (quantization-aware "
                        "distillation, no labels; needs torch and ModelOpt).")(command)


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


# --- ranges: every numeric option is checked where it is parsed, before any stage starts ------------------
# Spelled out so that --help needs neither numpy nor torch (tests/test_cli_validation.py checks they agree with
# effedge.arch.scaling.PHI_RANGE, effedge.export.onnx_export.OPSET_RANGE, the Q/DQ opsets of quantize and
# effedge.runtime.preprocess.INPUT_FORMATS).
PHI_RANGE = (0.0, 7.0)
OPSET_RANGE = (13, 21)
INPUT_FORMATS = ("float", "uint8", "pixels")  # effedge.runtime.preprocess.INPUT_FORMATS
INPUT_FORMAT_HELP = ("float: NCHW float32 normalized by the caller; uint8: NHWC uint8 RGB 0-255, normalized inside "
                     "the graph; pixels: NCHW float32 RGB 0-255, normalized inside the graph (DeepStream's "
                     "nvinfer feeds it with net-scale-factor=1, offsets=0).")
MAX_BATCH = 1024  # beyond any edge deployment; keeps a typo (--batch 10000) from allocating for minutes


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and ±inf (FloatRange lets nan through: every comparison is false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


class IntList(click.ParamType):
    """Comma-separated integers within [min, max], e.g. ``--batch 1,4,8``."""

    name = "integer list"

    def __init__(self, min: int, max: int | None = None) -> None:
        self.min, self.max = min, max

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            numbers = [int(part) for part in str(value).split(",") if part.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers, e.g. 1,4,8", param, ctx)
        if not numbers:
            self.fail("give at least one integer, e.g. 1", param, ctx)
        for number in numbers:
            if number < self.min or (self.max is not None and number > self.max):
                bound = f"{self.min}–{self.max}" if self.max is not None else f"≥ {self.min}"
                self.fail(f"{number} is not in the range {bound}", param, ctx)
        return numbers


class DynamicBatch(click.ParamType):
    """A dynamic-batch profile MIN:OPT:MAX with 1 ≤ MIN ≤ OPT ≤ MAX ≤ :data:`MAX_BATCH`."""

    name = "MIN:OPT:MAX"
    min, max = 1, MAX_BATCH

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            low, opt, high = (int(part) for part in str(value).split(":"))
        except ValueError:
            self.fail(f"{value!r} is not MIN:OPT:MAX, e.g. 1:4:8", param, ctx)
        if not self.min <= low <= opt <= high <= self.max:
            self.fail(f"{value} must satisfy {self.min} ≤ MIN ≤ OPT ≤ MAX ≤ {self.max}", param, ctx)
        return low, opt, high


def batch_size():
    return click.IntRange(1, MAX_BATCH)


def threshold(*, zero_ok: bool, one_ok: bool) -> FiniteFloatRange:
    """A score or IoU threshold in [0, 1], ends open as the NMS needs them."""
    return FiniteFloatRange(0.0, 1.0, min_open=not zero_ok, max_open=not one_ok)


# --- file inputs: missing, empty or of the wrong kind is refused in one line before any work -------------------

_KINDS = {"onnx": (".onnx",), "engine": (".engine", ".plan"), "model": (".onnx", ".engine", ".plan"),
          "json": (".json",), "yaml": (".yaml", ".yml")}
_KIND_NAMES = {"onnx": "an ONNX model (.onnx)", "engine": "a TensorRT engine (.engine, .plan)",
               "model": "an ONNX model or an engine (.onnx, .engine, .plan)", "json": "a JSON file (.json)",
               "yaml": "a YAML file (.yaml)"}


def looks_like_onnx(path: Path) -> bool:
    """An ONNX ModelProto starts with its ir_version field (tag 0x08): protobuf writes fields in number order."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x08"


class InputFile(click.Path):
    """An existing, non-empty file of one kind (``onnx``, ``engine``, ``model``, ``json``, ``yaml``)."""

    def __init__(self, kind: str) -> None:
        super().__init__(dir_okay=False)
        self.kind = kind

    def convert(self, value, param, ctx):
        path = Path(super().convert(value, param, ctx)).expanduser()
        if not path.exists():
            self.fail(f"{path} not found", param, ctx)
        if path.suffix.lower() not in _KINDS[self.kind]:
            self.fail(f"{path} is not {_KIND_NAMES[self.kind]}", param, ctx)
        if path.stat().st_size == 0:
            self.fail(f"{path} is empty (an interrupted write?); produce it again", param, ctx)
        if path.suffix.lower() == ".onnx" and not looks_like_onnx(path):
            self.fail(f"{path} is not an ONNX model (corrupt, or another kind of file)", param, ctx)
        if self.kind == "json":
            try:
                json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self.fail(f"{path} is not valid JSON ({getattr(exc, 'msg', exc)})", param, ctx)
        return str(path)


# effedge.runtime.images.IMAGE_SUFFIXES (no numpy at parse time; tests/test_cli_validation.py checks they agree)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder(click.Path):
    """An existing folder holding at least one image file (by suffix; decoding happens in the work)."""

    name = "folder"

    def __init__(self) -> None:
        super().__init__(file_okay=False)

    def convert(self, value, param, ctx):
        path = Path(super().convert(value, param, ctx)).expanduser()
        if not path.exists():
            self.fail(f"{path} does not exist", param, ctx)
        if not path.is_dir():
            self.fail(f"{path} is not a folder of images", param, ctx)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file()):
            self.fail(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in {path}", param, ctx)
        return str(path)



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


def image_size_option(help_text: str):
    """--imgsz: one input size (square) for what the command builds (compile, bench --variants, select, sweep)."""
    return click.option("--imgsz", type=click.IntRange(32, 4096), help=help_text)


_MODEL_OPTIONS = (
    click.option("--variant", help="b0..b7, lite0..lite4 (classifiers); d0..d7x, d-lite0..d-lite4, d-lite3x "
                                   "(detectors); the timm/effdet names too."),
    click.option("--phi", type=FiniteFloatRange(*PHI_RANGE),
                 help="Custom compound coefficient φ (0–7) instead of --variant."),
    click.option("--weights", help="Checkpoint: .pth file, URL, or known name (tf_efficientdet_d0, …); demo: the "
                 "shipped shapes detector (sets D0, 256 px, 4 classes and their names; works offline)."),
    click.option("--num-classes", type=click.IntRange(1, 100_000), help="Classes of the head (default 90 for detectors, 1000 for "
                 "classifiers)."),
    click.option("--pad", type=click.Choice(["same", "symmetric"]), default="same", show_default=True,
                 help="Checkpoint layout: TF-ported (same) or PyTorch-trained (symmetric)."),
    image_size_option("Input size (square); default the variant's. Multiple of the largest stride."),
    click.option("--batch", type=batch_size(), default=1, show_default=True, help="Static batch size."),
    click.option("--dynamic-batch", type=DynamicBatch(), help="Dynamic batch instead of --batch, e.g. 1:4:8."),
)


def model_options(command):
    """The options that name and shape a model (export and compile take the same ones)."""
    for option in reversed(_MODEL_OPTIONS):
        command = option(command)
    return command
