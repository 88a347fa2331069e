"""Profiles (schema, errors), the latency predictor on graphs with known costs, fitting, and selection."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from effedge import latency
from effedge.latency import LayerCost, graph_costs, predict_ms
from effedge.profiles import PROFILE_DIR, ProfileError, all_profiles, load_profile


@pytest.mark.parametrize("path", all_profiles(), ids=lambda p: p.stem)
def test_every_shipped_profile_validates(path):
    profile = load_profile(path)
    assert profile.device.sources and profile.target.latency_ms > 0


def test_expected_profiles_are_shipped():
    assert {p.stem for p in all_profiles()} >= {
        "orin-nano-8gb", "orin-nano-super", "orin-nx-16gb", "agx-orin-64gb", "xavier-nx", "agx-xavier", "t4",
        "rtx-3090", "rtx-4090", "a100", "h100", "cpu-local"}


def _broken(tmp_path, edit):
    data = yaml.safe_load((PROFILE_DIR / "orin-nx-16gb.yaml").read_text())
    edit(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["device"].pop("memory_bandwidth_gbs"), "device.memory_bandwidth_gbs: missing"),
    (lambda d: d["target"].update(latency_ms="30ms"), "target.latency_ms: expected a number of milliseconds, "
                                                      "got '30ms'"),
    (lambda d: d["target"].update(latency_ms=-5), "target.latency_ms: the latency budget must be positive"),
    (lambda d: d["device"].update(fp16_tflop=15), "device.fp16_tflop: unknown key (did you mean fp16_tflops?)"),
    (lambda d: d["target"].update(percentile="p50"), "target.percentile: 'p50' is not one of"),
    (lambda d: d.pop("software"), "software: missing section"),
])
def test_broken_profiles_name_file_and_field(tmp_path, edit, message):
    path = _broken(tmp_path, edit)
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    result = subprocess.run([sys.executable, "-m", "effedge", "select", "--profile", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr


def test_unknown_profile_suggests():
    with pytest.raises(ProfileError, match="did you mean orin-nx-16gb"):
        load_profile("orin-nx-16")


def _tiny_graph():
    """Conv 3×3 (8→16) on 1×8×16×16, depthwise 3×3, 1×1 conv (16→4), Add."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("w_dense", (16, 8, 3, 3)), ("w_dw", (16, 1, 3, 3)), ("w_pw", (4, 16, 1, 1))]]
    nodes = [helper.make_node("Conv", ["x", "w_dense"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_dw"], ["b"], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Conv", ["b", "w_pw"], ["c"]),
             helper.make_node("Add", ["c", "c"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_costs_are_exact_on_a_known_graph():
    costs = graph_costs(_tiny_graph(), "fp32")
    assert [c.op_class for c in costs] == ["conv", "depthwise", "pointwise", "memory"]
    assert [c.macs for c in costs] == [16 * 256 * 8 * 9, 16 * 256 * 9, 4 * 256 * 16, 0]
    assert costs[0].activation_bytes == (8 * 256 + 16 * 256) * 4 and costs[0].weight_bytes == 16 * 8 * 9 * 4
    assert costs[3].activation_bytes == (2 * 4 * 256 + 4 * 256) * 4
    assert graph_costs(_tiny_graph(), "int8")[0].weight_bytes == 16 * 8 * 9


def test_roofline_prediction_by_hand():
    profile = load_profile("t4")
    model = {"compute_scale": 0.5, "memory_scale": 0.25, "overhead_us": 2.0}
    costs = [LayerCost("conv", 1e9, 1e6, 0), LayerCost("depthwise", 1e6, 4e7, 0)]
    peak = 65e12 / 2 * 0.5
    bandwidth = 320e9 * 0.25
    expected = (max(1e9 / peak, 1e6 / bandwidth) + max(1e6 / (peak * 0.15), 4e7 / bandwidth) + 2 * 2e-6) * 1e3
    assert predict_ms(costs, profile, "fp16", model) == pytest.approx(expected)


def test_fit_recovers_known_parameters():
    profile = load_profile("cpu-local")
    truth = {"compute_scale": 0.42, "memory_scale": 0.31, "overhead_us": 25.0}
    points = []
    for size in (1, 2, 4, 8):
        costs = [LayerCost("conv", 2e8 * size, 3e6 * size, 1e5), LayerCost("depthwise", 1e7 * size, 2e7 * size, 0),
                 LayerCost("memory", 0, 4e7 * size, 0)] * 20
        points.append((costs, predict_ms(costs, profile, "fp32", truth)))
    fitted = latency.fit(points, profile, "fp32")
    for costs, ms in points:
        assert predict_ms(costs, profile, "fp32", fitted) == pytest.approx(ms, rel=1e-3)


def test_selection_on_constructed_costs(monkeypatch, tmp_path):
    profile = load_profile("cpu-local")
    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: [LayerCost("conv", 1e9 * (1 + spec.phi),
                                                                                       0, 0)])
    model = {"compute_scale": 1.0, "memory_scale": 1.0, "overhead_us": 0.0}
    profile.efficiency = model
    ms_per_gmac = predict_ms([LayerCost("conv", 1e9, 0, 0)], profile, "fp32", model)
    budget = ms_per_gmac * 4.2 / (1 - profile.target.margin)  # φ up to 3.2 fits
    candidates, choice = latency.select(profile, latency_ms=budget)
    assert choice.phi == max(c.phi for c in candidates if (1 + c.phi) * ms_per_gmac <= budget * 0.9 + 1e-9)
    assert choice.phi == 3.0 and all(c.fits == (c.predicted_ms <= budget * 0.9) for c in candidates)
    profile.measured = [{"variant": "d3", "precision": "fp32", "batch": 1, "latency_ms": budget * 10}]
    candidates, choice = latency.select(profile, latency_ms=budget)  # measured overrides: d3 is too slow
    assert choice.name == "phi2.5" and next(c for c in candidates if c.name == "d3").source == "measured"
    assert latency.select(profile, latency_ms=ms_per_gmac * 0.5)[1] is None


def test_small_export_scales_to_the_full_graph(tmp_path):
    from effedge.export import export

    export("d0", tmp_path)
    full = graph_costs(onnx.load(str(tmp_path / "model.sim.onnx")), "fp32")
    predicted = latency.candidate_costs(latency.resolve("d0"), "fp32", cache_dir=tmp_path / "costs")
    assert sum(c.macs for c in predicted) == pytest.approx(sum(c.macs for c in full), rel=1e-3)
    assert sum(c.activation_bytes for c in predicted) == pytest.approx(sum(c.activation_bytes for c in full),
                                                                       rel=1e-2)
    assert len(predicted) == len(full)


def test_compile_with_a_profile_compiles_the_selected_model(monkeypatch):
    from click.testing import CliRunner

    import effedge.pipeline
    from effedge.cli import cli

    profile = load_profile("orin-nx-16gb")
    model = {"compute_scale": 1.0, "memory_scale": 1.0, "overhead_us": 0.0}
    monkeypatch.setattr(latency, "DEFAULT_MODEL", model)
    ms_per_gmac = predict_ms([LayerCost("conv", 1e9, 0, 0)], profile, profile.target.precision, model)
    unit = profile.target.latency_ms * (1 - profile.target.margin) / ms_per_gmac / 4.2  # 1 + φ ≤ 4.2 units fit
    monkeypatch.setattr(latency, "candidate_costs",
                        lambda spec, precision: [LayerCost("conv", unit * 1e9 * (1 + spec.phi), 0, 0)])
    compiled = {}

    def fake_compile(config, out=None, **kwargs):
        compiled["config"] = config
        return {"variant": str(config.variant), "precision": config.precision, "backend": "tensorrt", "nms": "auto",
                "compile": {"cache_hit": False, "total_seconds": 0.0, "deployable": "model.engine"}}

    monkeypatch.setattr(effedge.pipeline, "compile_model", fake_compile)
    result = CliRunner().invoke(cli, ["compile", "--profile", "orin-nx-16gb"])
    assert result.exit_code == 0, result.output
    config = compiled["config"]
    assert config.variant == "d3"  # φ = 3 fits 4.2 units, φ = 3.5 does not
    assert config.precision == profile.target.precision and config.batch == profile.target.batch
    assert config.backend == "tensorrt"


@pytest.mark.parametrize("content, message", [("{not json", "is not JSON"), ('[{"x": 1}]', "holds no `effedge bench")])
def test_profile_fit_refuses_foreign_input(tmp_path, content, message):
    from helpers import effedge_cli

    profile = tmp_path / "p.yaml"
    profile.write_text((PROFILE_DIR / "cpu-local.yaml").read_text())
    results = tmp_path / "results.json"
    results.write_text(content)
    result = effedge_cli("profile", "fit", str(profile), str(results))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert profile.read_text() == (PROFILE_DIR / "cpu-local.yaml").read_text()  # untouched
