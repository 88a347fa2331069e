import json

from click.testing import CliRunner
from helpers import effedge_cli

from effedge.cli import cli


def test_models_json_lists_every_variant_with_counts():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["variant"] for r in rows] == ([f"b{i}" for i in range(8)] + [f"lite{i}" for i in range(5)]
                                            + [f"d{i}" for i in range(8)] + ["d7x"]
                                            + ["d-lite0", "d-lite1", "d-lite2", "d-lite3", "d-lite3x", "d-lite4"])
    d0 = rows[13]
    assert d0["resolution"] == 512 and d0["params"] == 3_880_067 and 2.4e9 < d0["macs"] < 2.6e9
    assert d0["bifpn_channels"] == 64 and d0["bifpn_layers"] == 3 and d0["head_layers"] == 3


def test_models_table_and_info():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0 and "d7x" in result.output and "3.88M" in result.output
    result = CliRunner().invoke(cli, ["info", "--phi", "1.5"])
    assert result.exit_code == 0, result.output
    assert "phi1.5" in result.output and "BiFPN: 104 ch × 5 layers" in result.output
    info = json.loads(CliRunner().invoke(cli, ["info", "d0", "--json"]).output)
    assert info["anchors"]["total"] == 49104 and len(info["backbone_stages"]["stages"]) == 7


def test_typo_gives_one_line_with_a_suggestion_and_no_traceback():
    result = effedge_cli("info", "d8")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown variant 'd8'; did you mean d7x?"
    assert "Traceback" not in result.stderr + result.stdout


def test_debug_shows_the_traceback():
    result = effedge_cli("--debug", "info", "d9")  # (--phi -1 is now refused by its range, before the library)
    assert result.returncode != 0 and "Traceback" in result.stderr and "VariantError" in result.stderr


def test_usage_errors():
    result = effedge_cli("info")
    assert result.returncode == 2 and "give a VARIANT or --phi" in result.stderr


def test_profile_does_not_silently_override_an_explicit_precision_batch_or_nms():
    for extra, named in ((["--precision", "fp16"], "--precision"), (["--batch", "4"], "--batch"),
                         (["--nms", "onnx"], "--nms")):
        result = CliRunner().invoke(cli, ["compile", "--profile", "orin-nx-16gb", *extra])
        assert result.exit_code == 2 and f"drop {named}" in result.output, result.output


def test_random_weights_are_announced_and_recorded(tmp_path):
    result = effedge_cli("export", "--variant", "b0", "--imgsz", "64", "--out", str(tmp_path / "b0"))
    assert result.returncode == 0, result.stderr
    assert "no --weights: b0 gets random weights" in result.stderr
    assert json.loads((tmp_path / "b0" / "build.json").read_text())["weights"] == "random"


def _commands(group, prefix=""):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_option_has_help_and_every_reporting_command_has_json():
    import click

    for name, command in _commands(cli):
        undocumented = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert undocumented == [], f"{name}: {undocumented}"
        assert any(p.name == "as_json" for p in command.params), f"{name} has no --json"


def test_help_examples_render_one_per_line():
    """Every example in a command's help is a line of its own (Click rewraps a paragraph unless a \\b line
    opens it); profile list/fit and select have examples."""
    import inspect

    from click.testing import CliRunner

    with_examples = set()
    for name, command in [("profile", cli.commands["profile"]), *_commands(cli)]:
        examples = [line.strip() for line in (inspect.getdoc(command.callback) or "").splitlines()
                    if line.strip().startswith("effedge ")]
        if not examples:
            continue
        with_examples.add(name)
        rendered = [line.strip() for line in CliRunner().invoke(cli, [*name.split(), "--help"]).output.splitlines()]
        assert [e for e in examples if e not in rendered] == [], name
    assert {"profile list", "profile fit", "select", "bench", "sweep"} <= with_examples


def test_imgsz_is_one_knob_across_commands():
    """compile, export, bench (--variants), select and sweep size models with the same --imgsz."""
    import click

    found = {}
    for name, command in _commands(cli):
        for param in command.params:
            if isinstance(param, click.Option) and "--imgsz" in param.opts:
                found[name] = (param.type.min, param.type.max, param.default)
    assert {"export", "compile", "bench", "select", "sweep"} <= set(found)
    assert len(set(found.values())) == 1, found


def test_one_name_for_one_thing_across_commands():
    """Thresholds are --score-threshold/--iou-threshold everywhere; --nms defaults alike, so bench hits compile's
    cache; --out is always a directory."""
    import click

    seen = {}
    for name, command in _commands(cli):
        for param in command.params:
            if isinstance(param, click.Option):
                assert not {"--score", "--iou"} & set(param.opts), name
                if param.name == "nms":
                    seen[name] = param.default
                if param.name == "out":
                    assert isinstance(param.type, click.Path) and not param.type.file_okay, name
    assert set(seen.values()) == {"auto"} and {"export", "compile", "bench"} <= set(seen)


def test_exit_codes_two_for_bad_input_one_for_run_failures(monkeypatch):
    from effedge.cli.main import main
    from effedge.errors import RunError

    def run(args):
        monkeypatch.setattr("sys.argv", ["effedge", *args])
        try:
            main()
        except SystemExit as exit_:
            return exit_.code
        return 0

    assert run(["info", "d9"]) == 2  # bad input
    assert run(["models", "--no-such-option"]) == 2  # bad usage

    def failing_doctor():
        raise RunError("CUDA call cudaMalloc failed: cudaErrorMemoryAllocation (out of memory)")

    monkeypatch.setattr("effedge.pipeline.doctor.diagnose", failing_doctor)
    assert run(["doctor"]) == 1  # valid input, failed at run time
