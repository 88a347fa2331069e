"""Bad input is refused where it is parsed, in one line, before any stage starts; suggested fixes are commands
that exist; refused runs leave nothing behind."""
from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import click
import numpy as np
import pytest

from effedge.cli import cli
from helpers import run_main as run_entry_point
from effedge.cli import cache as cli_cache
from effedge.cli import options as cli_options

HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt_rtx", "modelopt", "effedge.pipeline", "effedge.export",
         "effedge.quantize", "effedge.engine", "effedge.bench", "effedge.fleet", "effedge.models")


def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str, str]:
    return run_entry_point(monkeypatch, capsys, args, drop_progress=True)


def leaf_commands(group: click.Group = cli, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


NUMERIC_TYPES = (click.types._NumberParamTypeBase, cli_options.IntList, cli_options.DynamicBatch, cli_cache.Duration)


def out_of_range_values(param: click.Parameter) -> list[str]:
    """Values just outside ``param``'s range (both ends where it has them); [] when it has no range."""
    kind = param.type
    if isinstance(kind, cli_cache.Duration):  # more than 0, at most kind.max seconds
        return ["0s", "-1d", f"{kind.max // 86400 + 1}d"]
    if isinstance(kind, (cli_options.IntList, cli_options.DynamicBatch)):
        low, high = kind.min, kind.max
        values = []
        if isinstance(kind, cli_options.DynamicBatch):
            return [f"{low - 1}:{low}:{low}", f"{low}:{high}:{high + 1}", "4:2:8"]
        return [f"{low},{low - 1}"] + ([str(high + 1)] if high is not None else []) + values
    if not isinstance(kind, (click.IntRange, click.FloatRange)):
        return []
    integer = isinstance(kind, click.IntRange)
    values = []
    if kind.min is not None:
        values.append(str(kind.min - 1) if integer or not kind.min_open else str(kind.min))
    if kind.max is not None:
        values.append(str(kind.max + 1) if integer or not kind.max_open else str(kind.max))
    if not integer:
        values += ["nan", "inf"]
    return values


def filler_args(command: click.Command, tmp_path: Path, skip: str) -> list[str]:
    """Valid values for every required parameter of ``command`` (except ``skip``)."""
    args, positional = [], []
    for param in command.params:
        if param.name == skip or not param.required:
            continue
        kind = param.type
        if isinstance(kind, click.Choice):
            value = kind.choices[0]
        elif isinstance(kind, cli_options.InputFile):
            suffix = cli_options._KINDS[kind.kind][0]
            value = str(tmp_path / f"input{suffix}")
            Path(value).write_bytes({".onnx": b"\x08\x07", ".json": b"[]"}.get(suffix, b"x: 1\n"))
        elif isinstance(kind, cli_options.ImageFolder):
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / "images" / "a.png").write_bytes(b"png")
            value = str(tmp_path / "images")
        else:
            value = "cpu-local" if param.name == "profile_name" else "x"
        if isinstance(param, click.Argument):
            positional.append(value)
        else:
            args += [param.opts[0], value]
    return positional + args


def numeric_params():
    for path, command in leaf_commands():
        for param in command.params:
            if isinstance(param.type, NUMERIC_TYPES) or param.type in (click.INT, click.FLOAT):
                yield path, command, param


def test_every_numeric_option_is_range_checked_before_any_work(monkeypatch, capsys, tmp_path):
    """Walks the Click tree: each numeric option, given a value outside its range, is refused in one line
    (exit 2) before its command's callback runs: nothing is called, imported or written."""
    params = list(numeric_params())
    unranged = [f"effedge {' '.join(path)} {param.opts[0]}" for path, _, param in params
                if not out_of_range_values(param)]
    assert not unranged, f"numeric options without a range (use click.IntRange/FloatRange or options.py): {unranged}"
    called = []
    for path, command in leaf_commands():
        monkeypatch.setattr(command, "callback", lambda *a, _path=path, **k: called.append(_path))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    checked = 0
    for path, command, param in params:
        fill = filler_args(command, tmp_path, skip=param.name)
        code, _, err = run_main(monkeypatch, capsys, [*path, *fill])  # the control: in range, the command runs
        assert code == 0 and called == [path], (path, fill, err)
        called.clear()
        for value in out_of_range_values(param):
            before = set(sys.modules)
            code, out, err = run_main(monkeypatch, capsys, [*path, *fill, param.opts[0], value])
            where = f"effedge {' '.join(path)} {param.opts[0]} {value}"
            assert code == 2, (where, code, err)
            assert len(err.splitlines()) == 1 and err.startswith("error: ") and param.opts[0] in err, (where, err)
            assert "Traceback" not in err + out, where
            assert not called, (where, "the command ran")
            assert not [m for m in set(sys.modules) - before if m.startswith(HEAVY)], where
            assert not list(work.iterdir()), (where, "wrote files")
            checked += 1
    # 40 numeric options in 11 commands when this was written; new ones are walked too
    print(f"range-checked {len(params)} numeric options with {checked} out-of-range values")
    assert len(params) >= 40


def test_spelled_out_ranges_agree_with_the_library():
    from effedge.arch.scaling import PHI_RANGE
    from effedge.export.onnx_export import OPSET_RANGE
    from effedge.quantize.precision import PrecisionOptions
    from effedge.runtime.images import IMAGE_SUFFIXES
    from effedge.runtime.preprocess import INPUT_FORMATS

    assert cli_options.PHI_RANGE == PHI_RANGE and cli_options.OPSET_RANGE == OPSET_RANGE
    assert cli_options.INPUT_FORMATS == INPUT_FORMATS
    assert cli_options.IMAGE_SUFFIXES == IMAGE_SUFFIXES
    for opset in (cli_options.OPSET_RANGE[0] - 1, cli_options.OPSET_RANGE[1] + 1):  # quantize's own check agrees
        with pytest.raises(Exception, match="--opset"):
            PrecisionOptions(precision="fp16", opset=opset).validate()
    PrecisionOptions(precision="fp16", opset=cli_options.OPSET_RANGE[0]).validate()


# --- file inputs ------------------------------------------------------------------------------------------

def tiny_onnx(path: Path) -> Path:
    """A real ONNX model (a 3×3 convolution, static 1×3×8×8 input), big enough that a cut copy is corrupt."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["out"], pads=[1, 1, 1, 1])], "tiny",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def files(tmp_path):
    from PIL import Image

    root = tmp_path / "in"
    root.mkdir()
    good = tiny_onnx(root / "good.onnx")
    data = good.read_bytes()
    (root / "empty.onnx").write_bytes(b"")
    (root / "cut.onnx").write_bytes(data[: len(data) // 2])
    (root / "text.onnx").write_text('{"not": "onnx"}')
    (root / "model.json").write_bytes(data)
    (root / "empty.engine").write_bytes(b"")
    for name in ("empty.json", "empty.yaml", "empty.pth"):
        (root / name).write_bytes(b"")
    (root / "cut.json").write_text('{"a": [1, 2')
    (root / "list.json").write_text("[1, 2]")
    (root / "cut.yaml").write_text("a: [\n")
    (root / "list.yaml").write_text("- 1\n")
    (root / "cut.pth").write_bytes(b"PK\x03\x04 not a zip")
    (root / "no-images").mkdir()
    (root / "broken-images").mkdir()
    (root / "broken-images" / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    (root / "e2e").mkdir()  # a model with the build.json end-to-end mode reads its resolution from
    (root / "e2e" / "model.fp32.onnx").write_bytes(data)
    (root / "e2e" / "build.json").write_text(json.dumps({"precision": "fp32", "resolution": [8, 8]}))
    (root / "no-manifest").mkdir()
    (root / "bad-manifest").mkdir()
    (root / "bad-manifest" / "build.json").write_text("{")
    return root


MODEL = ["missing.onnx", "empty.onnx", "cut.onnx", "text.onnx", "model.json"]  # missing, empty, corrupt, wrong kind ×2
FOLDER = ["missing-folder", "no-images", "good.onnx"]  # missing, empty, wrong kind (a file)
JSON = ["missing.json", "empty.json", "cut.json", "list.json"]
YAML = ["missing.yaml", "empty.yaml", "cut.yaml", "list.yaml"]
WEIGHTS = ["missing.pth", "empty.pth", "cut.pth", "good.onnx"]
FILE_CASES = (
    [("quantize", ["quantize", f, "--precision", "fp16"]) for f in MODEL]
    + [("quantize --calib", ["quantize", "good.onnx", "--precision", "int8", "--calib", f])
       for f in FOLDER + ["broken-images"]]
    + [(f"build {backend}", ["build", f, "--backend", backend, "--out", "OUT"])
       for backend in ("tensorrt", "tensorrt-rtx") for f in MODEL]
    + [("bench", ["bench", f, "--iterations", "1", "--warmup", "0", "--duration", "0"])
       for f in MODEL + ["no-manifest", "bad-manifest"]]
    + [("bench --end-to-end", ["bench", "e2e/model.fp32.onnx", "--end-to-end", f, "--iterations", "1", "--warmup",
                               "0", "--duration", "0"]) for f in FOLDER + ["broken-images"]]
    + [("bench --end-to-end no build.json", ["bench", "good.onnx", "--end-to-end", "images"])]
    + [("detect", ["detect", f, "images/a.png", "--out", "OUT"]) for f in MODEL + ["empty.engine"]]
    + [("detect IMAGES", ["detect", "good.onnx", f, "--out", "OUT"])
       for f in ["missing.png", "broken-images/a.jpg", "images"]]
    + [("eval", ["eval", f, "--images", "images", "--annotations", "list.json"]) for f in MODEL]
    + [("eval --images", ["eval", "good.onnx", "--images", f, "--annotations", "list.json"]) for f in FOLDER]
    + [("eval --annotations", ["eval", "good.onnx", "--images", "images", "--annotations", f]) for f in JSON]
    + [("eval --compare", ["eval", "good.onnx", "--compare", f, "--images", "images", "--annotations", "list.json"])
       for f in MODEL]
    + [("profile fit", ["profile", "fit", "cpu-local", f]) for f in JSON]
    + [("select", ["select", "--profile", f]) for f in YAML]
    + [("sweep", ["sweep", f]) for f in YAML]
    + [("compile --profile", ["compile", "--profile", f]) for f in YAML]
    + [(f"{command} --weights", [command, "--variant", "b0", "--imgsz", "32", "--weights", f, "--out", "OUT"])
       for command in ("export", "compile") for f in WEIGHTS]
    + [("compile --calib", ["compile", "--variant", "b0", "--imgsz", "32", "--precision", "int8", "--calib", f,
                            "--out", "OUT"]) for f in FOLDER]
)


@pytest.mark.parametrize("argv", [argv for _, argv in FILE_CASES],
                         ids=[f"{label}-{i}" for i, (label, _) in enumerate(FILE_CASES)])
def test_bad_file_inputs_are_one_line_exit_2(argv, files, monkeypatch, capsys):
    """Every file input that is missing, empty, corrupt or of the wrong kind: one line, exit 2, no traceback,
    nothing written; on every backend."""
    monkeypatch.chdir(files)
    code, out, err = run_main(monkeypatch, capsys, argv)
    assert code == 2, (argv, code, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), (argv, err)
    assert "Traceback" not in out + err
    assert not (files / "OUT").exists(), "a refused run left its --out folder"


# --- suggested fixes name what exists ------------------------------------------------------------------------

SUGGESTION = re.compile(r"effedge [a-z][^;()`'\"]*")
FRAGMENT = re.compile(r"(--[a-z][a-z-]*)(?: ([a-z0-9][a-z0-9.:-]*))?")


def resolve(tokens: list[str]) -> tuple[click.Command, list[str]]:
    command = cli
    while isinstance(command, click.Group) and tokens and tokens[0] in command.commands:
        command, tokens = command.commands[tokens[0]], tokens[1:]
    return command, tokens


def check_option(command: click.Command, option: str, value: str | None, where: str) -> None:
    params = {opt: p for p in command.params for opt in p.opts}
    assert option in params, f"{where}: effedge {command.name} has no {option}"
    kind = params[option].type
    if isinstance(kind, click.Choice) and value is not None:
        assert value in kind.choices, f"{where}: {option} {value} is not one of {kind.choices}"


def check_suggestions(message: str, argv: list[str]) -> int:
    """Every effedge command a message suggests parses, and every bare --option it names exists (with a valid
    choice) on the command that printed it. Returns how many suggestions were checked."""
    count = 0
    for suggestion in SUGGESTION.findall(message):
        command, rest = resolve(shlex.split(suggestion)[1:])
        assert not isinstance(command, click.Group), f"{message}: {suggestion!r} names no command"
        for option, value in FRAGMENT.findall(" ".join(rest)):
            check_option(command, option, value or None, message)
        count += 1
    bare = SUGGESTION.sub("", message)
    command, _ = resolve(argv)
    for option, value in FRAGMENT.findall(bare):
        check_option(command, option, value or None, message)
        count += 1
    return count


def rtx_build_dir(root: Path) -> Path:
    """A build directory whose deployable is a TensorRT-RTX engine built from model.fp32.onnx beside it."""
    out = root / "rtx"
    out.mkdir()
    tiny_onnx(out / "model.fp32.onnx")
    (out / "model.fp32.engine").write_bytes(b"engine bytes")
    (out / "build.json").write_text(json.dumps({
        "variant": "tiny", "precision": "fp32", "backend": "tensorrt-rtx", "resolution": [8, 8],
        "compile": {"deployable": "model.fp32.engine"},
        "engines": {"model.fp32.engine": {"backend": "tensorrt-rtx", "file": "model.fp32.engine"}}}))
    return out


def test_suggested_fixes_are_commands_that_exist(files, monkeypatch, capsys):
    """build, compile, select --verify, detect and bench on a machine without TensorRT or a GPU: each refusal's
    advice parses with the CLI (no unknown option, no invalid choice)."""
    monkeypatch.chdir(files)
    rtx = rtx_build_dir(files)
    scenarios = [
        ["build", "good.onnx"],
        ["build", "good.onnx", "--backend", "tensorrt"],
        ["compile", "--variant", "b0", "--imgsz", "32", "--backend", "tensorrt"],
        ["select", "--profile", "orin-nx-16gb", "--verify"],
        ["detect", str(rtx / "model.fp32.engine"), "images/a.png"],
        ["bench", str(rtx), "--iterations", "1", "--warmup", "0", "--duration", "0"],
    ]
    checked = 0
    for argv in scenarios:
        code, out, err = run_main(monkeypatch, capsys, argv)
        assert code in (1, 2) and err.startswith("error: ") and len(err.splitlines()) == 1, (argv, err)
        checked += check_suggestions(err, argv)
    assert checked >= 3  # compile's --backend advice, select's, build's are there to check


def test_bench_of_an_rtx_build_dir_on_onnxruntime_benches_its_onnx_model(files, monkeypatch, capsys):
    """Was: 'bench the engine with --backend tensorrt-rtx' (which needs a GPU). The ONNX model the engine was
    built from is in the directory: ONNX Runtime benches that."""
    rtx = rtx_build_dir(files)
    code, out, err = run_main(monkeypatch, capsys, ["bench", str(rtx), "--backend", "onnxruntime", "--iterations",
                                                    "2", "--warmup", "0", "--duration", "0", "--json"])
    assert code == 0, err
    [result] = json.loads(out)
    assert result["backend"] == "onnxruntime" and result["target"].endswith("model.fp32.onnx"), result


def test_select_with_no_candidate_in_budget_exits_non_zero(monkeypatch, capsys):
    from effedge.pipeline import measure
    from effedge.plan import latency

    monkeypatch.setattr(measure, "calibrated", lambda prof, precision, log: prof)
    monkeypatch.setattr(latency, "select", lambda prof, **kwargs: ([], None))
    for extra in ([], ["--json"]):
        code, out, err = run_main(monkeypatch, capsys, ["select", "--profile", "orin-nx-16gb", "--latency-ms", "1",
                                                        *extra])
        assert code == 1 and err.startswith("error: no candidate meets 1 ms") and len(err.splitlines()) == 1, err
    assert json.loads(out)["choice"] is None  # the JSON is still printed for scripts


# --- leftovers -------------------------------------------------------------------------------------------------

def test_refused_build_leaves_no_out_folder(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    for argv in (["build", "good.onnx", "--out", "engines"],  # TensorRT is not installed here
                 ["build", "good.onnx", "--backend", "tensorrt-rtx", "--dla", "0", "--out", "engines"]):
        code, _, err = run_main(monkeypatch, capsys, argv)
        assert code == 2 and err.startswith("error: "), err
        assert not (files / "engines").exists(), argv


def test_interrupted_qdq_placement_leaves_no_temp_file(tmp_path, monkeypatch):
    """ModelOpt's int8 quantize makes its intermediate model with ``tempfile.mkstemp(suffix=".onnx")`` in the
    system temp folder, then runs ONNX Runtime's quantize_static (modelopt/onnx/quantization/int8.py); Ctrl-C
    there left a 0-byte tmp*.onnx behind. The stand-in does exactly that."""
    import os
    import tempfile

    from effedge.quantize import precision

    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))

    def modelopt_quantize(onnx_path, **kwargs):
        handle, _ = tempfile.mkstemp(suffix=".onnx")
        os.close(handle)
        raise KeyboardInterrupt  # during quantize_static

    monkeypatch.setattr(precision, "_modelopt", lambda: (None, modelopt_quantize))
    source = tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(KeyboardInterrupt):
        precision.place_qdq(source, "hash", precision.ModelInput("images", "float", (8, 8), 1), None, "fp16",
                            log=lambda message: None)
    assert list(system_temp.iterdir()) == []
    assert tempfile.gettempdir() == str(system_temp)  # the process's temp folder is restored
