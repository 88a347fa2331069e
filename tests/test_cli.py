import json

from click.testing import CliRunner
from helpers import effedge_cli

from effedge.cli import cli


def test_models_json_lists_every_variant_with_counts():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["variant"] for r in rows] == [f"b{i}" for i in range(8)] + [f"d{i}" for i in range(8)] + ["d7x"]
    d0 = rows[8]
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
    result = effedge_cli("--debug", "info", "--phi", "-1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "VariantError" in result.stderr


def test_usage_errors():
    result = effedge_cli("info")
    assert result.returncode == 2 and "give a VARIANT or --phi" in result.stderr


def test_profile_does_not_silently_override_an_explicit_precision_or_batch():
    for extra, named in ((["--precision", "fp16"], "--precision"), (["--batch", "4"], "--batch")):
        result = CliRunner().invoke(cli, ["compile", "--profile", "orin-nx-16gb", *extra])
        assert result.exit_code == 2 and f"drop {named}" in result.output, result.output


def test_random_weights_are_announced_and_recorded(tmp_path):
    result = effedge_cli("export", "--variant", "b0", "--imgsz", "64", "--out", str(tmp_path / "b0"))
    assert result.returncode == 0, result.stderr
    assert "no --weights: b0 gets random weights" in result.stderr
    assert json.loads((tmp_path / "b0" / "build.json").read_text())["weights"] == "random"
