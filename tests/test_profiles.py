"""Profiles (schema, errors, user copies), the latency predictor on graphs with known costs, fitting,
self-calibration and selection."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from effedge.errors import EffedgeError
from effedge.pipeline import measure
from effedge.plan import latency
from effedge.plan.latency import LayerCost, graph_costs, latency_terms, predict_ms
from effedge.plan.profiles import (PROFILE_DIR, ComputeEfficiency, Fit, Measured, Priors, ProfileError,
                                   all_profiles, load_profile)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def user_profile_dir(tmp_path, monkeypatch):
    """Fits and calibrations of these tests go to a temporary user profile directory, never ~/.config."""
    directory = tmp_path / "user-profiles"
    monkeypatch.setenv("EFFEDGE_PROFILE_DIR", str(directory))
    return directory


@pytest.mark.parametrize("path", all_profiles(), ids=lambda p: p.stem)
def test_every_shipped_profile_validates(path):
    profile = load_profile(path)
    assert profile.device.sources and profile.target.latency_ms > 0
    assert not profile.fits and not profile.measured  # shipped profiles carry priors, never a machine's fit


@pytest.mark.parametrize("path", all_profiles(), ids=lambda p: p.stem)
def test_shipped_profiles_carry_cited_priors(path):
    priors = load_profile(path).priors
    assert priors is not None, "shipped profiles need efficiency priors"
    assert "MLPerf Inference v3.1" in priors.source or priors.source.startswith("unconfirmed")


@pytest.mark.parametrize("name, published_ms", [("agx-orin-64gb", 11.56), ("orin-nx-16gb", 28.43)])
def test_orin_priors_are_anchored_on_mlperf_retinanet(name, published_ms):
    source = load_profile(name).priors.source
    assert "MLPerf Inference v3.1" in source and "RetinaNet" in source and f"median {published_ms} ms" in source
    assert "inference_results_v3.1" in source and not source.startswith("unconfirmed")


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
                                                      "got '30ms' (write the number without a unit)"),
    (lambda d: d["target"].update(latency_ms=-5), "target.latency_ms: the latency budget must be positive"),
    (lambda d: d["device"].update(fp16_tflop=15), "device.fp16_tflop: unknown key (did you mean fp16_tflops?)"),
    (lambda d: d["target"].update(percentile="p50"), "target.percentile: 'p50' is not one of"),
    (lambda d: d.pop("software"), "software: missing section"),
    (lambda d: d["device"].update(dla_cores=1.5), "device.dla_cores: expected a whole number, got 1.5"),
    (lambda d: d["priors"].update(memory=1.5), "priors.memory: must be less than or equal to 1, got 1.5"),
    (lambda d: d["priors"]["compute"].pop("fp16"), "priors.compute.fp16: missing"),
    (lambda d: d["priors"]["compute"].update(int4=0.5), "priors.compute.int4: unknown key (did you mean int8?)"),
    (lambda d: d["priors"].pop("source"), "priors.source: missing"),
    (lambda d: d.update(model={"fits": {"fp32": {"compute": 1}}}), "model.fits.fp32.memory: missing"),
    (lambda d: d.update(model={"fits": {"fp32": {"overheads": 1}}}),
     "model.fits.fp32.overheads: unknown key (did you mean overhead?)"),
    (lambda d: d.update(model={"fits": {"fp64": {}}}), "model.fits.fp64: 'fp64' is not one of"),
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


def _tiny_graph(size: int = 16, channels: int = 8):
    """Conv 3×3 (channels→16) on 1×channels×size×size, depthwise 3×3, 1×1 conv (16→4), Add."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("w_dense", (16, channels, 3, 3)), ("w_dw", (16, 1, 3, 3)), ("w_pw", (4, 16, 1, 1))]]
    nodes = [helper.make_node("Conv", ["x", "w_dense"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_dw"], ["b"], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Conv", ["b", "w_pw"], ["c"]),
             helper.make_node("Add", ["c", "c"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_costs_are_exact_on_a_known_graph():
    costs = graph_costs(_tiny_graph(), "fp32")
    assert [c.op_class for c in costs] == ["conv", "depthwise", "pointwise", "memory"]
    assert [c.macs for c in costs] == [16 * 256 * 8 * 9, 16 * 256 * 9, 4 * 256 * 16, 0]
    assert costs[0].activation_bytes == (8 * 256 + 16 * 256) * 4 and costs[0].weight_bytes == 16 * 8 * 9 * 4
    assert costs[3].activation_bytes == (2 * 4 * 256 + 4 * 256) * 4
    assert graph_costs(_tiny_graph(), "int8")[0].weight_bytes == 16 * 8 * 9


def _with_priors(name: str, compute: float, memory: float, overhead_us: float):
    profile = load_profile(name)
    profile.priors = Priors(compute=ComputeEfficiency(fp32=compute, fp16=compute, int8=compute), memory=memory,
                            overhead_us=overhead_us, source="test")
    return profile


def test_roofline_terms_and_weights_by_hand():
    profile = _with_priors("t4", compute=0.5, memory=0.25, overhead_us=2.0)
    costs = [LayerCost("conv", 1e9, 1e6, 0), LayerCost("depthwise", 1e6, 4e7, 0)]
    peak, bandwidth = 65e12 / 2 * 0.5, 320e9 * 0.25
    compute_bound = 1e9 / peak  # > 1e6 / bandwidth
    memory_bound = 4e7 / bandwidth  # > 1e6 / (peak · 0.15)
    expected = np.array([compute_bound * 1e3, memory_bound * 1e3, 2 * 2e-3])
    assert latency_terms(costs, profile, "fp16") == pytest.approx(expected)
    assert predict_ms(costs, profile, "fp16") == pytest.approx(expected.sum())  # unfitted: the prior roofline
    fitted = Fit(compute=2.0, memory=0.5, overhead=3.0, method="fit", points=["a"], shape_error=0.0)
    assert predict_ms(costs, profile, "fp16", fitted) == pytest.approx(expected @ [2.0, 0.5, 3.0])


def _synthetic_points(profile, truth, sizes):
    """(costs, ms) for graphs of different shape, timed by a 'device' whose terms weigh ``truth``."""
    points = []
    for size in sizes:
        costs = ([LayerCost("conv", 2e8 * size ** 1.5, 3e6 * size, 1e5)] * 20 +
                 [LayerCost("depthwise", 1e7 * size, 2e7 * size, 0)] * (10 + 5 * size) +
                 [LayerCost("memory", 0, 4e7 * size ** 0.7, 0)] * (30 + 10 * size))
        points.append((costs, float(latency_terms(costs, profile, "fp32") @ truth)))
    return points


@pytest.mark.parametrize("noise", [(1, 1, 1, 1), (1.0, 1.12, 0.93, 1.2)], ids=["consistent", "noisy"])
@pytest.mark.parametrize("sizes", [(1,), (1, 3), (1, 3, 8), (1, 2, 4, 8)], ids=lambda s: f"{len(s)} points")
def test_fit_reproduces_every_point_it_was_fitted_on(sizes, noise):
    profile = load_profile("cpu-local")
    points = [(costs, ms * factor) for (costs, ms), factor in
              zip(_synthetic_points(profile, np.array([0.42, 3.1, 0.2]), sizes), noise)]
    fitted = latency.fit(points, profile, "fp32")
    for costs, ms in points:
        assert predict_ms(costs, profile, "fp32", fitted) == pytest.approx(ms, rel=latency.FIT_TOLERANCE)
    if noise == (1, 1, 1, 1):  # measurements the roofline's shape can explain: the weights alone do it
        assert fitted.shape_error <= latency.FIT_TOLERANCE


def test_corrections_interpolate_between_points_and_hold_beyond():
    profile = _with_priors("cpu-local", compute=1.0, memory=1.0, overhead_us=0.0)
    ms_per_gmac = latency_terms([LayerCost("conv", 1e9, 0, 0)], profile, "fp32")[0]
    graph = lambda ms: [LayerCost("conv", 1e9 * ms / ms_per_gmac, 0, 0)]  # noqa: E731  prior time: ms
    fitted = Fit(compute=1.0, memory=1.0, overhead=1.0, method="fit", points=["a", "b"], shape_error=0.5,
                 corrections=[{"prior_ms": 10.0, "factor": 1.0}, {"prior_ms": 40.0, "factor": 2.0}])
    assert predict_ms(graph(20.0), profile, "fp32", fitted) == pytest.approx(20.0 * 2 ** 0.5)  # log-linear
    assert predict_ms(graph(5.0), profile, "fp32", fitted) == pytest.approx(5.0)
    assert predict_ms(graph(100.0), profile, "fp32", fitted) == pytest.approx(200.0)


def test_one_point_fit_is_one_scale_factor_even_where_memory_ops_dominate():
    """The reported case: D0 measured 49.9 ms where the prior's memory-bound ops alone take more; the old fit
    could only change the compute scale and predicted +214 % at that very point."""
    profile = load_profile("cpu-local")
    costs = [LayerCost("pointwise", 5e6, 1e5, 1e3)] * 200 + [LayerCost("memory", 0, 3e6, 0)] * 380
    assert latency_terms(costs, profile, "fp32")[1] > 49.9  # the memory-bound term alone exceeds the measurement
    fitted = latency.fit([(costs, 49.9)], profile, "fp32")
    assert fitted.compute == fitted.memory == fitted.overhead  # one point: one scale factor on everything
    assert predict_ms(costs, profile, "fp32", fitted) == pytest.approx(49.9, rel=1e-9)


def test_fit_uses_no_more_weights_than_needed():
    profile = load_profile("cpu-local")
    points = _synthetic_points(profile, np.array([0.5, 0.5, 0.5]), (1, 3, 8))  # truth is one scale factor
    fitted = latency.fit(points, profile, "fp32")
    assert fitted.compute == pytest.approx(0.5) and fitted.memory == pytest.approx(0.5)
    assert fitted.overhead == pytest.approx(0.5)


def test_selection_on_constructed_costs(monkeypatch):
    profile = _with_priors("cpu-local", compute=1.0, memory=1.0, overhead_us=0.0)
    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: [LayerCost("conv", 1e9 * (1 + spec.phi),
                                                                                       0, 0)])
    ms_per_gmac = predict_ms([LayerCost("conv", 1e9, 0, 0)], profile, "fp32")
    budget = ms_per_gmac * 4.2 / (1 - profile.target.margin)  # φ up to 3.2 fits
    candidates, choice = latency.select(profile, latency_ms=budget)
    assert choice.phi == max(c.phi for c in candidates if (1 + c.phi) * ms_per_gmac <= budget * 0.9 + 1e-9)
    assert choice.phi == 3.0 and all(c.fits == (c.predicted_ms <= budget * 0.9) for c in candidates)
    profile.measured = [Measured(variant="d3", precision="fp32", batch=1, resolution=[896, 896], nms="onnx",
                                 latency_ms=budget * 10)]
    candidates, choice = latency.select(profile, latency_ms=budget)  # measured overrides
    assert choice.name == "phi2.5" and next(c for c in candidates if c.name == "d3").source == "measured"
    assert latency.select(profile, latency_ms=ms_per_gmac * 0.5)[1] is None


def test_unfitted_cpu_profile_calibrates_itself_once(monkeypatch, user_profile_dir):
    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: [LayerCost("conv", 1e9 * (1 + spec.phi),
                                                                                       1e6, 0)])
    timed = []
    on_this_cpu = {"d0": 30.0, "d1": 75.0}  # d1 has twice d0's MACs, and takes 2.5 times as long

    def time_reference(variant, precision, batch, percentile, nms, log):
        timed.append((variant, precision, nms))
        return on_this_cpu[variant]

    monkeypatch.setattr(measure, "time_reference", time_reference)
    profile = load_profile("cpu-local")
    shipped = profile.path.read_text()
    assert latency.needs_calibration(profile, "fp32")
    candidates, choice = latency.select(measure.calibrated(profile, "fp32"), latency_ms=90)
    # timed with the tail compile deploys on ONNX Runtime, not the tail-free graph
    assert timed == [("d0", "fp32", "onnx"), ("d1", "fp32", "onnx")]
    by_name = {c.name: c for c in candidates}
    assert (by_name["d0"].predicted_ms, by_name["d1"].predicted_ms) == (30.0, 75.0)
    assert by_name["d0"].source == by_name["d1"].source == "measured"
    calibrated = load_profile("cpu-local")  # now the user copy
    assert calibrated.path.parent == user_profile_dir and calibrated.fits["fp32"].method == "self-calibration"
    assert calibrated.fits["fp32"].nms == "onnx" and {m.nms for m in calibrated.measured} == {"onnx"}
    for variant, ms in on_this_cpu.items():  # the fit itself reproduces both points
        costs = latency.candidate_costs(latency.resolve(variant), "fp32")
        assert predict_ms(costs, calibrated, "fp32") == pytest.approx(ms, rel=1e-9)
    assert 30.0 < by_name["phi0.5"].predicted_ms < 75.0  # interpolated between the timed points
    assert by_name["d2"].predicted_ms == pytest.approx(75.0 * 3 / 2, rel=1e-3)  # d1's correction holds beyond
    assert choice.name == "d1"  # measured 75 ms ≤ 0.9 · 90 ms; φ = 1.5 is predicted at 93.75 ms
    latency.select(measure.calibrated(calibrated, "fp32"), latency_ms=90)
    assert len(timed) == 2  # stored: not timed again
    assert "(NMS tail onnx): self-calibrated on d0 fp32 b1, d1 fp32 b1" in latency.describe_model(calibrated, "fp32")
    assert profile.path.read_text() == shipped


def test_measured_points_count_only_at_their_size_batch_precision_and_nms_tail(monkeypatch):
    """The reported case: `sweep --fit` at 128 px stored D0 as measured, and select showed D0 at 512 px as
    "measured 2.3 ms". A point counts only for the variant, input size, batch, precision and NMS tail it was
    measured at (cpu-local deploys the onnx tail)."""
    profile = _with_priors("cpu-local", compute=1.0, memory=1.0, overhead_us=0.0)
    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: [LayerCost("conv", 1e9 * (1 + spec.phi),
                                                                                       0, 0)])
    exact = dict(variant="d0", precision="fp32", batch=1, resolution=[512, 512], nms="onnx")
    elsewhere = [{**exact, "resolution": [128, 128]}, {**exact, "batch": 4}, {**exact, "precision": "fp16"},
                 {**exact, "nms": "none"}, {**exact, "nms": None}, {**exact, "resolution": None}]
    profile.measured = [Measured(**point, latency_ms=2.3) for point in elsewhere]
    d0 = next(c for c in latency.select(profile, latency_ms=100, precision="fp32")[0] if c.name == "d0")
    assert d0.source == "predicted" and d0.predicted_ms != 2.3
    profile.measured.append(Measured(**exact, latency_ms=7.5))
    d0 = next(c for c in latency.select(profile, latency_ms=100, precision="fp32")[0] if c.name == "d0")
    assert (d0.source, d0.predicted_ms) == ("measured", 7.5)


def test_a_fit_of_another_nms_tail_is_not_used(monkeypatch):
    """A fit to tail-free graphs says nothing about the tailed graph cpu-local deploys: predictions fall back
    to the priors, the note says why, and the CPU profile calibrates itself again."""
    profile = load_profile("cpu-local")
    prior = predict_ms([LayerCost("conv", 1e9, 0, 0)], profile, "fp32")
    fitted = Fit(compute=3.0, memory=3.0, overhead=3.0, method="self-calibration", points=["d0 fp32 b1"],
                 shape_error=0.0, nms="none")
    profile.fits = {"fp32": fitted}
    assert predict_ms([LayerCost("conv", 1e9, 0, 0)], profile, "fp32") == prior
    assert latency.needs_calibration(profile, "fp32")
    assert "measured with NMS tail none, it deploys onnx" in latency.describe_model(profile, "fp32")
    profile.fits = {"fp32": fitted.model_copy(update={"nms": "onnx"})}
    assert predict_ms([LayerCost("conv", 1e9, 0, 0)], profile, "fp32") == pytest.approx(3 * prior)
    assert not latency.needs_calibration(profile, "fp32")


def test_profile_fit_uses_only_results_of_the_profiles_nms_tail(tmp_path, user_profile_dir):
    """Tail-free and tailed results of the same model: the fit (and the measured points) take the tailed one
    cpu-local deploys, the other is listed as left out; with none of the deployed tail, one line says so."""
    onnx.save(_tiny_graph(16), str(tmp_path / "m.onnx"))
    result = {"label": "m fp32", "target": "m.onnx", "backend": "onnxruntime", "precision": "fp32", "batch": 1,
              "variant": "m", "resolution": [16, 16], "mode": "inference"}
    path = _bench_json(tmp_path, [{**result, "nms": "none", "latency_ms": {"median": 28.6}},
                                  {**result, "label": "m fp32 tailed", "nms": "onnx", "latency_ms": {"median": 30.1}}])
    from helpers import effedge_cli

    run = effedge_cli("profile", "fit", "cpu-local", str(path))
    assert run.returncode == 0, run.stderr
    assert "left out 1 result(s) measured with another NMS tail than cpu-local's (onnx): m fp32" in run.stderr
    report = latency.fit_profile("cpu-local", [str(path)])
    assert [p["measured_ms"] for p in report["fits"]["fp32"]["points"]] == [30.1]
    assert report["left_out"] == [{"label": "m fp32", "nms": "none"}]
    fitted = load_profile("cpu-local")
    assert fitted.fits["fp32"].nms == "onnx"
    assert [(m.latency_ms, m.nms, m.resolution) for m in fitted.measured] == [(30.1, "onnx", [16, 16])]
    only_tail_free = _bench_json(tmp_path / "b", [{**result, "target": str(tmp_path / "m.onnx"), "nms": "none",
                                                   "latency_ms": {"median": 28.6}}])
    with pytest.raises(EffedgeError, match=r"NMS tail \(onnx; the results have none\): "
                                                                    r"bench with --nms onnx"):
        latency.fit_profile("cpu-local", [str(only_tail_free)])


def test_verify_compiles_with_the_profiles_nms_tail(monkeypatch):
    import effedge.bench.targets
    import effedge.pipeline.compile

    compiled = []
    monkeypatch.setattr(effedge.pipeline.compile, "compile_model", lambda config, **kwargs: compiled.append(config)
                        or {"compile": {"out_dir": "/nowhere", "deployable": "model.fp32.onnx"}, "backend": "onnxruntime"})
    monkeypatch.setattr(effedge.bench.targets, "bench_one", lambda *args, **kwargs: {"latency_ms": {"median": 1.0}})
    profile = load_profile("cpu-local")
    choice = latency.Candidate("d0", 0.0, 512, 2.5e9, 1.0, "predicted", True)
    verification = measure.verify_choice(profile, [choice], choice, 10.0, "fp32")
    assert [c.nms for c in compiled] == ["onnx"] and verification["nms"] == "onnx"


def test_select_imgsz_costs_every_candidate_at_that_size(monkeypatch):
    from click.testing import CliRunner

    import effedge.bench.targets
    import effedge.pipeline.compile
    from effedge.cli import cli

    result = CliRunner().invoke(cli, ["select", "--profile", "orin-nx-16gb", "--imgsz", "384", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["image_size"] == 384 and {c["resolution"] for c in report["candidates"]} == {384}
    assert "d7x" not in {c["name"] for c in report["candidates"]}  # its largest stride is 256
    assert "left out at 384 px" in result.stderr and "d7x" in result.stderr
    table = CliRunner().invoke(cli, ["select", "--profile", "orin-nx-16gb", "--imgsz", "384"])
    assert "every candidate costed at 384 px (--imgsz)" in table.stdout
    refused = CliRunner().invoke(cli, ["select", "--profile", "orin-nx-16gb", "--imgsz", "320", "--family", "d"])
    assert refused.exit_code != 0 and "not a multiple of any candidate's size multiple" in str(refused.exception)
    # --verify compiles at that size too
    compiled = []
    monkeypatch.setattr(effedge.pipeline.compile, "compile_model", lambda config, **kwargs: compiled.append(config)
                        or {"compile": {"out_dir": "/nowhere", "deployable": "model.fp32.onnx"}, "backend": "onnxruntime"})
    monkeypatch.setattr(effedge.bench.targets, "bench_one", lambda *args, **kwargs: {"latency_ms": {"median": 1.0}})
    choice = latency.Candidate("d0", 0.0, 384, 2.5e9, 1.0, "predicted", True)
    measure.verify_choice(load_profile("cpu-local"), [choice], choice, 10.0, "fp32", image_size=384)
    assert [c.image_size for c in compiled] == [384]


def test_unfitted_device_profile_says_so_and_how_to_fit(monkeypatch):
    monkeypatch.setattr(measure, "time_reference", lambda *args: pytest.fail("a device profile cannot be timed "
                                                                              "on this machine"))
    profile = load_profile("orin-nx-16gb")
    assert measure.calibrated(profile, "int8") is profile
    note = latency.describe_model(profile, "int8")
    assert "unfitted" in note and "MLPerf" in note
    assert "effedge bench --variants d0,d1,d2 --precisions int8 --nms efficientnms --json > bench.json" in note
    assert "effedge profile fit orin-nx-16gb bench.json" in note


def test_small_export_scales_to_the_full_graph(tmp_path):
    from effedge.export.onnx_export import export

    export("d0", tmp_path)
    full = graph_costs(onnx.load(str(tmp_path / "model.sim.onnx")), "fp32")
    predicted = latency.exported_costs(latency.resolve("d0"), "fp32", cache_dir=tmp_path / "costs")
    assert sum(c.macs for c in predicted) == pytest.approx(sum(c.macs for c in full), rel=1e-3)
    assert sum(c.activation_bytes for c in predicted) == pytest.approx(sum(c.activation_bytes for c in full),
                                                                       rel=1e-2)
    assert len(predicted) == len(full)


def _exported_graph(variant, size: int, tmp_path: Path):
    """The simplified export with raw outputs that the latency predictor costs (as exported_costs makes it)."""
    import torch

    from effedge.export.onnx_export import deployable, example_input, output_names, torch_export
    from effedge.export.simplify import simplify_model
    from effedge.models import build_model

    torch_export(deployable(build_model(variant, image_size=size), "float"),
                 torch.from_numpy(example_input((size, size), 1, "float")), tmp_path / "m.onnx",
                 output_names(True), 17, None)
    return simplify_model(onnx.load(str(tmp_path / "m.onnx")))


@pytest.mark.parametrize("variant", ["d0", 0.5, "d-lite0", pytest.param("d1", marks=pytest.mark.slow)], ids=str)
def test_architecture_costs_agree_with_the_exported_graph(variant, tmp_path):
    """select costs candidates from their architecture, not an export: the layer list must be the graph's
    (convolutions exactly; the export's constant folding leaves one fusion Mul fewer, 0.3 % of the memory-bound
    bytes), so that every shipped profile predicts the same latency to within 0.5 %."""
    import dataclasses

    spec = dataclasses.replace(latency.resolve(variant), image_size=128)
    graph = _exported_graph(variant, 128, tmp_path)
    exported = graph_costs(graph, "fp16")
    analytic = latency.candidate_costs(spec, "fp16")

    def by_kind(costs, field):
        return {kind: sum(getattr(c, field) for c in costs if c.op_class == kind) for kind in
                ("conv", "pointwise", "depthwise", "memory")}

    counts = lambda costs: {k: sum(c.op_class == k for c in costs) for k in by_kind(costs, "macs")}  # noqa: E731
    assert {k: v for k, v in counts(analytic).items() if k != "memory"} == \
           {k: v for k, v in counts(exported).items() if k != "memory"}
    assert abs(counts(analytic)["memory"] - counts(exported)["memory"]) <= 2
    assert by_kind(analytic, "macs") == by_kind(exported, "macs")
    for field in ("activation_bytes", "weight_bytes"):
        ours, theirs = by_kind(analytic, field), by_kind(exported, field)
        for kind in ("conv", "pointwise", "depthwise"):
            assert ours[kind] == theirs[kind], (field, kind)
        assert ours["memory"] == pytest.approx(theirs["memory"], rel=5e-3), field
    for precision in ("fp32", "fp16", "int8"):
        exported, analytic = graph_costs(graph, precision), latency.candidate_costs(spec, precision)
        for path in all_profiles():
            profile = load_profile(path)
            assert predict_ms(analytic, profile, precision) == pytest.approx(
                predict_ms(exported, profile, precision), rel=5e-3), (path.stem, precision)


def test_select_exports_nothing(monkeypatch):
    """The first select answers from the architecture: no candidate is built or exported."""
    import effedge.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "torch_export", lambda *args: pytest.fail("select exported a candidate"))
    candidates, choice = latency.select(load_profile("orin-nx-16gb"))
    assert len(candidates) == len(latency.candidate_specs()) and choice is not None


def test_compile_with_a_profile_compiles_the_selected_model(monkeypatch):
    from click.testing import CliRunner

    import effedge.pipeline.compile
    from effedge.cli import cli

    profile = load_profile("orin-nx-16gb")
    ms_per_gmac = latency_terms([LayerCost("conv", 1e9, 0, 0)], profile, profile.target.precision)[0]
    unit = profile.target.latency_ms * (1 - profile.target.margin) / ms_per_gmac / 4.2  # 1 + φ ≤ 4.2 units fit
    monkeypatch.setattr(latency, "candidate_costs",
                        lambda spec, precision: [LayerCost("conv", unit * 1e9 * (1 + spec.phi), 0, 0)])
    compiled = {}

    def fake_compile(config, out=None, **kwargs):
        compiled["config"] = config
        return {"variant": str(config.variant), "precision": config.precision, "backend": "tensorrt", "nms": "auto",
                "compile": {"cache_hit": False, "total_seconds": 0.0, "deployable": "model.engine",
                            "out_dir": "runs/x"}}

    monkeypatch.setattr(effedge.pipeline.compile, "compile_model", fake_compile)
    result = CliRunner().invoke(cli, ["compile", "--profile", "orin-nx-16gb"])
    assert result.exit_code == 0, result.output
    config = compiled["config"]
    assert config.variant == "d3"  # φ = 3 fits 4.2 units, φ = 3.5 does not (the prior's overhead: 2 µs)
    assert config.precision == profile.target.precision and config.batch == profile.target.batch
    assert config.backend == "tensorrt"
    assert config.nms == profile.nms == "efficientnms"  # what it was selected for, what compile deploys there
    selected_at = []  # with --imgsz, selected at the size it compiles
    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: selected_at.append(spec.resolution)
                        or [LayerCost("conv", unit * 1e9 * (1 + spec.phi), 0, 0)])
    assert CliRunner().invoke(cli, ["compile", "--profile", "orin-nx-16gb", "--imgsz", "384"]).exit_code == 0
    assert set(selected_at) == {384} and compiled["config"].image_size == 384


@pytest.mark.parametrize("content, message", [("{not json", "is not valid JSON"), ('[{"x": 1}]', "holds no `effedge bench")])
def test_profile_fit_refuses_foreign_input(tmp_path, content, message):
    from helpers import effedge_cli

    profile = tmp_path / "p.yaml"
    profile.write_text((PROFILE_DIR / "cpu-local.yaml").read_text())
    results = tmp_path / "results.json"
    results.write_text(content)
    result = effedge_cli("profile", "fit", str(profile), str(results))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert profile.read_text() == (PROFILE_DIR / "cpu-local.yaml").read_text()  # untouched


def _bench_json(directory: Path, results: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.json"
    path.write_text(json.dumps(results))
    return path


def test_profile_fit_writes_a_user_copy_and_resolves_paths_from_anywhere(tmp_path, user_profile_dir):
    """Bench JSON with model paths relative to the JSON file, fitted from another directory; the shipped
    profile stays as it is, the fit lands in the user profile directory and reproduces its points."""
    bench_dir = tmp_path / "bench"
    (bench_dir / "models").mkdir(parents=True)
    profile, truth, results = load_profile("cpu-local"), np.array([0.3, 2.0, 0.05]), []
    for index, size in enumerate((16, 48, 96)):
        model = _tiny_graph(size, channels=8 * (index + 1))
        onnx.save(model, str(bench_dir / "models" / f"m{size}.onnx"))
        ms = float(latency_terms(graph_costs(model, "fp32"), profile, "fp32") @ truth)
        results.append({"label": f"m{size} fp32 onnxruntime", "target": f"models/m{size}.onnx",
                        "backend": "onnxruntime", "precision": "fp32", "batch": 1, "variant": f"m{size}",
                        "mode": "inference", "nms": "onnx", "latency_ms": {"median": ms, "p90": 2 * ms}})
    path = _bench_json(bench_dir, results)
    shipped = (PROFILE_DIR / "cpu-local.yaml").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's effedge, run from another directory
    run = subprocess.run([sys.executable, "-m", "effedge", "profile", "fit", "cpu-local", str(path), "--json"],
                         capture_output=True, text=True, cwd=elsewhere, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (PROFILE_DIR / "cpu-local.yaml").read_bytes() == shipped
    assert Path(report["written_to"]) == user_profile_dir / "cpu-local.yaml"
    points = report["fits"]["fp32"]["points"]
    assert [p["measured_ms"] for p in points] == [r["latency_ms"]["median"] for r in results]
    assert all(abs(p["error"]) <= latency.FIT_TOLERANCE for p in points)
    fitted = load_profile("cpu-local")
    assert fitted.path == user_profile_dir / "cpu-local.yaml" and fitted.fits["fp32"].points == ["m16", "m48", "m96"]
    listed = subprocess.run([sys.executable, "-m", "effedge", "profile", "list", "--json"], capture_output=True,
                            text=True, cwd=elsewhere, env=env)
    origins = {(p["profile"], p["origin"]) for p in json.loads(listed.stdout)}
    assert {("cpu-local", "shipped, overridden"), ("cpu-local", "user copy"), ("t4", "shipped")} <= origins


def test_profile_fit_names_a_missing_model(tmp_path):
    from helpers import effedge_cli

    path = _bench_json(tmp_path, [{"label": "x", "target": "gone/model.fp32.onnx", "backend": "onnxruntime",
                                   "precision": "fp32", "nms": "onnx", "latency_ms": {"median": 1.0}}])
    result = effedge_cli("profile", "fit", "cpu-local", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'gone/model.fp32.onnx'}" in result.stderr and "fitting needs the ONNX graph" in result.stderr


def test_bench_json_target_is_absolute(tmp_path, monkeypatch):
    from effedge.bench.harness import BenchSettings
    from effedge.bench.targets import bench_one

    onnx.save(_tiny_graph(), str(tmp_path / "tiny.onnx"))
    monkeypatch.chdir(tmp_path)
    result = bench_one(Path("tiny.onnx"), {}, "onnxruntime",
                       BenchSettings(warmup_s=0, min_iterations=2, min_duration_s=0, energy=False))
    monkeypatch.chdir(REPO)
    assert Path(result["target"]).is_absolute() and Path(result["target"]) == tmp_path / "tiny.onnx"
    assert result["nms"] == "none"


def test_bench_records_the_nms_tail_of_what_it_measured(tmp_path):
    from helpers import raw_outputs_graph

    from effedge.bench.harness import BenchSettings
    from effedge.bench.targets import bench_one
    from effedge.export.nms_tail import append_nms_tail

    onnx.save(append_nms_tail(raw_outputs_graph(1, 50, 3), "onnx", score_threshold=0.3, iou_threshold=0.5,
                              max_detections=5), str(tmp_path / "tailed.onnx"))
    result = bench_one(tmp_path / "tailed.onnx", {}, "onnxruntime",
                       BenchSettings(warmup_s=0, min_iterations=2, min_duration_s=0, energy=False))
    assert result["nms"] == "onnx"


@pytest.mark.slow
def test_self_calibration_on_this_cpu(tmp_path, monkeypatch, user_profile_dir):
    """The real thing: compile and time D0 and D1 on this CPU; the stored fit reproduces what was measured."""
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    profile = measure.calibrated(load_profile("cpu-local"), "fp32")
    assert profile.path.parent == user_profile_dir and [m.variant for m in profile.measured] == ["d0", "d1"]
    for point in profile.measured:
        costs = latency.candidate_costs(latency.resolve(point.variant), "fp32")
        assert predict_ms(costs, profile, "fp32") == pytest.approx(point.latency_ms, rel=latency.FIT_TOLERANCE)


@pytest.mark.parametrize("name", ["rtx-3090", "rtx-4090"])
def test_rtx_desktop_profiles_target_fp16(name):
    """TensorRT-RTX (the RTX cards' ahead-of-time builder) has no native INT8 convolution: fp16 is their choice."""
    assert load_profile(name).target.precision == "fp16"


def test_a_profile_compiled_for_tensorrt_rtx_defaults_to_fp16():
    from effedge.plan.profiles import for_backend

    a100 = load_profile("a100")
    assert a100.target.precision == "int8"
    assert for_backend(a100, "tensorrt-rtx").target.precision == "fp16"
    assert for_backend(a100, "tensorrt").target.precision == "int8"  # full TensorRT runs INT8 convolutions
    assert load_profile("a100").target.precision == "int8"  # the loaded profile is not changed


def test_compile_with_a_profile_for_tensorrt_rtx_compiles_fp16(monkeypatch):
    from click.testing import CliRunner

    import effedge.pipeline.compile
    from effedge.cli import cli

    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: [LayerCost("conv", 1e6, 0, 0)])
    compiled = {}

    def fake_compile(config, out=None, **kwargs):
        compiled["config"] = config
        return {"variant": str(config.variant), "precision": config.precision, "backend": config.backend,
                "nms": "none", "compile": {"cache_hit": False, "total_seconds": 0.0, "deployable": "model.engine",
                                           "out_dir": "runs/x"}}

    monkeypatch.setattr(effedge.pipeline.compile, "compile_model", fake_compile)
    result = CliRunner().invoke(cli, ["compile", "--profile", "a100", "--backend", "tensorrt-rtx"])
    assert result.exit_code == 0, result.output
    assert compiled["config"].precision == "fp16" and compiled["config"].backend == "tensorrt-rtx"
