"""`effedge select` across families (D, Lite, fractional φ): the family filter, the published accuracy each
candidate carries and the choice reports, and the latency features of ReLU6 / no-SE graphs."""
import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effedge.arch import complexity
from effedge.arch.accuracy import PUBLISHED, accuracy_of
from effedge.arch.scaling import EFFICIENTDET_LITES, EFFICIENTDETS, EFFICIENTNET_LITES, EFFICIENTNETS, resolve
from effedge.errors import VariantError
from effedge.plan import latency
from effedge.plan.latency import graph_costs, latency_terms
from effedge.plan.profiles import load_profile
from helpers import run_main


@pytest.fixture(autouse=True)
def user_profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFEDGE_PROFILE_DIR", str(tmp_path / "user-profiles"))


# The figures as their sources print them (see effedge/arch/accuracy.py): COCO AP, ImageNet top-1.
SOURCE_TABLES = {
    "d0": 34.6, "d1": 40.5, "d2": 43.0, "d3": 47.5, "d4": 49.7, "d5": 51.5, "d6": 52.6, "d7": 53.7, "d7x": 55.1,
    "d-lite0": 26.4, "d-lite1": 31.5, "d-lite2": 35.1, "d-lite3": 38.8, "d-lite4": 43.2, "d-lite3x": 42.6,
    "lite0": 75.1, "lite1": 76.7, "lite2": 77.6, "lite3": 79.8, "lite4": 81.5,
}


def test_published_accuracy_is_the_sources_and_grows_with_size_in_every_family():
    for name, value in SOURCE_TABLES.items():
        assert accuracy_of(resolve(name)).value == value, name
        assert accuracy_of(resolve(name)).source == "published"
    assert set(PUBLISHED) == set(EFFICIENTDETS) | set(EFFICIENTDET_LITES) | set(EFFICIENTNETS) | set(EFFICIENTNET_LITES)
    from effedge.arch.complexity import analytic_complexity

    for family in (EFFICIENTDETS, EFFICIENTDET_LITES, EFFICIENTNETS, EFFICIENTNET_LITES):
        by_macs = sorted(family, key=lambda name: analytic_complexity(name)[1])
        assert [PUBLISHED[n] for n in by_macs] == sorted(PUBLISHED[n] for n in by_macs), by_macs


def test_fractional_phi_is_interpolated_between_named_variants_and_says_so():
    half = accuracy_of(resolve(1.5))
    assert half.value == pytest.approx((40.5 + 43.0) / 2) and half.source == "interpolated"
    assert "d1" in half.basis and "d2" in half.basis
    late = accuracy_of(resolve(6.25))  # on the D axis: D6 to D7, not D7x (another backbone)
    assert late.value == pytest.approx(52.6 + 0.25 * (53.7 - 52.6)) and "d7x" not in late.basis
    resized = accuracy_of(dataclasses.replace(resolve("d0"), image_size=384))
    assert resized.value == 34.6 and "512 px" in resized.basis and "384 px" in resized.basis


def test_family_filter():
    profile = load_profile("orin-nx-16gb")
    everything, best = latency.select(profile, latency_ms=33)
    assert {c.family for c in everything} == {"d", "lite"} and best.family == "lite"  # d-lite4 beats d2 here
    lite, lite_best = latency.select(profile, latency_ms=33, family="lite")
    assert {c.name for c in lite} == set(EFFICIENTDET_LITES) and lite_best.name in EFFICIENTDET_LITES
    d, d_best = latency.select(profile, latency_ms=33, family="d")
    assert not {c.name for c in d} & set(EFFICIENTDET_LITES) and d_best.family == "d"
    assert any(c.name.startswith("phi") for c in d) and not any(c.name.startswith("phi") for c in lite)
    for candidates, choice in ((everything, best), (lite, lite_best), (d, d_best)):  # the most accurate that fits
        assert choice.accuracy == max(c.accuracy for c in candidates if c.fits)
    with pytest.raises(VariantError, match="unknown family 'b'"):
        latency.candidate_specs(family="b")


def test_the_choice_is_the_most_accurate_that_fits_not_the_largest(monkeypatch):
    """Across families MACs no longer rank accuracy: d-lite3x has more MACs than D2 and 0.4 AP less."""
    gmacs = {"d-lite0": 1.0, "d2": 5.0, "d-lite3x": 6.0}
    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: [
        latency.LayerCost("conv", 1e9 * gmacs.get(spec.name, 100.0), 0, 0)])
    profile = load_profile("cpu-local")
    ms_per_gmac = latency.predict_ms([latency.LayerCost("conv", 1e9, 0, 0)], profile, "fp32")
    candidates, choice = latency.select(profile, latency_ms=6.5 * ms_per_gmac / 0.9)
    assert {c.name for c in candidates if c.fits} == set(gmacs)
    assert choice.name == "d2" and choice.accuracy == 43.0


def test_classifier_costs_extrapolate_from_small_exports(tmp_path):
    """Classifier candidates are costed from two small exports; at 32 px the export drops the global pool."""
    from effedge.export.onnx_export import deployable, example_input, output_names, torch_export
    from effedge.export.simplify import simplify_model
    from effedge.models import build_model
    import torch

    spec = dataclasses.replace(resolve("lite0"), resolution=160)
    predicted = latency.exported_costs(spec, "fp32", cache_dir=tmp_path / "costs")
    torch_export(deployable(build_model(spec, image_size=160), "float"),
                 torch.from_numpy(example_input((160, 160), 1, "float")), tmp_path / "m.onnx", output_names(False),
                 17, None)
    full = graph_costs(simplify_model(onnx.load(str(tmp_path / "m.onnx"))), "fp32")
    assert len(predicted) == len(full)
    assert sum(c.macs for c in predicted) == pytest.approx(sum(c.macs for c in full), rel=1e-6)


def test_lite_sizes_are_multiples_of_32_and_others_are_left_out():
    candidates, choice = latency.select(load_profile("orin-nx-16gb"), image_size=320)
    assert {c.name for c in candidates} == set(EFFICIENTDET_LITES) and choice is not None
    with pytest.raises(VariantError, match="not a multiple of any candidate's size multiple"):
        latency.select(load_profile("orin-nx-16gb"), image_size=320, family="d")


def test_select_reports_the_choices_accuracy(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, ["select", "--profile", "orin-nx-16gb", "--latency-ms", "33",
                                                    "--family", "d", "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["family"] == "d" and report["accuracy_metric"] == "COCO AP"
    choice = report["choice"]
    assert choice["accuracy"] == SOURCE_TABLES[choice["name"]] and choice["accuracy_source"] == "published"
    for candidate in report["candidates"]:
        assert candidate["accuracy"] == accuracy_of(latency.resolve(candidate["name"] if candidate["name"][0] == "d"
                                                                    else candidate["phi"])).value
    code, out, err = run_main(monkeypatch, capsys, ["select", "--profile", "orin-nx-16gb", "--latency-ms", "33",
                                                    "--family", "d"])
    assert code == 0 and f"choice: {choice['name']} " in out
    assert f"COCO AP {choice['accuracy']:.1f} ({choice['name']} as published: COCO test-dev2017" in out
    candidates = latency.select(load_profile("orin-nx-16gb"), step=0.25, family="d")[0]
    custom = next(c for c in candidates if c.name == "phi1.25")
    assert custom.predicted_ms < next(c.predicted_ms for c in candidates if c.name == "d2")
    budget = custom.predicted_ms / 0.9 * 1.0001  # φ = 1.25 fits, D2 does not
    code, out, err = run_main(monkeypatch, capsys, ["select", "--profile", "orin-nx-16gb", "--latency-ms", str(budget),
                                                    "--family", "d", "--step", "0.25", "--json"])
    interpolated = json.loads(out)["choice"]
    assert interpolated["name"] == "phi1.25" and interpolated["accuracy_source"] == "interpolated"
    assert interpolated["accuracy"] == pytest.approx(40.5 + 0.25 * (43.0 - 40.5))


def test_unknown_family_is_one_line_exit_2(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, ["select", "--profile", "orin-nx-16gb", "--family", "b"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--family" in err and "'lite'" in err


# ReLU6 (Clip) nodes in the simplified ONNX export of effdet's tf_efficientdet_lite0, the reference (counted by
# test_reference_lite_graph_has_the_activations_and_convolutions_costed, which the slow set runs).
REFERENCE_ACTIVATIONS = {"d-lite0": 86}


def _activation_graph(activation: str) -> onnx.ModelProto:
    """A 3×3 convolution and its activation, ReLU6 as torch exports it (Clip) or SiLU (Sigmoid, Mul)."""
    weight = numpy_helper.from_array(np.zeros((16, 8, 3, 3), np.float32), "w")
    bounds = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    if activation == "relu6":
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    else:
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])],
                              [weight, *bounds])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_features_distinguish_relu6_from_silu_graphs():
    profile = load_profile("cpu-local")
    relu6, silu = (latency_terms(graph_costs(_activation_graph(kind), "fp32"), profile, "fp32")
                   for kind in ("relu6", "silu"))
    assert relu6[0] == silu[0]  # the same convolution
    assert relu6[1] < silu[1] and relu6[2] < silu[2]  # one pass over the map instead of two; one layer fewer
    # the architecture's layer list (what select costs) follows the spec's activation, and a Lite has no SE
    spec = resolve("d-lite0")
    as_lite, as_silu = complexity.analytic_layers(spec), complexity.analytic_layers(spec, activation="silu")
    assert as_lite == complexity.analytic_layers(spec, activation="relu6")
    assert len(as_silu) - len(as_lite) == REFERENCE_ACTIVATIONS["d-lite0"]  # each ReLU6 one layer, SiLU two
    costed = lambda layers: latency_terms([latency.LayerCost(l.op_class, l.macs, l.activations * 4,  # noqa: E731
                                                             l.weights * 4) for l in layers], profile, "fp32")
    relu6_terms, silu_terms = costed(as_lite), costed(as_silu)
    assert np.allclose(latency_terms(latency.candidate_costs(spec, "fp32"), profile, "fp32"), relu6_terms)
    assert relu6_terms[0] == silu_terms[0] and relu6_terms[1] < silu_terms[1] and relu6_terms[2] < silu_terms[2]
    assert len(complexity.analytic_layers("d0")) == len(complexity.analytic_layers("d0", activation="silu"))


@pytest.mark.slow
def test_reference_lite_graph_has_the_activations_and_convolutions_costed(effdet_reference):
    """effdet's EfficientDet-Lite0 (ReLU6, no squeeze-excite) at 320 px, exported and simplified: its Clip and Conv
    nodes are the activations and convolutions select costs for d-lite0."""
    import io
    from collections import Counter

    import torch

    from effedge.export.simplify import simplify_model

    module, get_config = effdet_reference
    model = module.EfficientDet(get_config("tf_efficientdet_lite0"), pretrained_backbone=False).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, 320, 320), buffer, opset_version=17, dynamo=False)
    ops = Counter(node.op_type for node in simplify_model(onnx.load_from_string(buffer.getvalue())).graph.node)
    assert ops["Clip"] == REFERENCE_ACTIVATIONS["d-lite0"] and "Sigmoid" not in ops and "ReduceMean" not in ops
    layers = complexity.analytic_layers("d-lite0")
    assert sum(layer.op_class != "memory" for layer in layers) == ops["Conv"]


def test_verify_steps_down_to_the_next_less_accurate(monkeypatch):
    """--verify: a choice that misses the budget on this machine gives way to the next less accurate candidate
    (not the next with fewer MACs: d-lite3x has more MACs than D2 and less AP); the next more accurate one is
    measured after, to show the budget is tight."""
    import effedge.bench.targets
    import effedge.pipeline.compile
    from effedge.pipeline import measure

    measured = {"d-lite4": 12.0, "d2": 11.0, "d-lite3x": 9.0, "d1": 6.0}
    compiled = []
    monkeypatch.setattr(effedge.pipeline.compile, "compile_model", lambda config, **kwargs: compiled.append(
        config.variant) or {"compile": {"out_dir": "/nowhere", "deployable": "m.onnx"}, "backend": "onnxruntime"})
    monkeypatch.setattr(effedge.bench.targets, "bench_one",
                        lambda *args, **kwargs: {"latency_ms": {"median": measured[compiled[-1]]}})
    candidates = [latency.Candidate(name, 0.0, 640, gmacs * 1e9, 5.0, "predicted", True,
                                    accuracy=accuracy_of(resolve(name)).value)
                  for name, gmacs in (("d1", 6.0), ("d2", 10.8), ("d-lite3x", 14.0), ("d-lite4", 20.2))]
    choice = max(candidates, key=latency.selection_key)
    verification = measure.verify_choice(load_profile("cpu-local"), candidates, choice, 10.0, "fp32")
    assert [step["name"] for step in verification["steps"]] == ["d-lite4", "d2", "d-lite3x", "d2"]
    assert verification["choice"] == "d-lite3x"


def test_at_one_input_size_the_choice_is_the_most_compute_that_fits():
    """With --imgsz no published AP applies (each is at its variant's own size; at 384 px d6 and d7 are one
    network): the choice is the candidate with the most MACs that fits, and --verify steps down in that order."""
    candidates, choice = latency.select(load_profile("orin-nano-8gb"), image_size=384)
    fitting = [c for c in candidates if c.fits]
    assert choice is not None and len(fitting) > 1
    assert choice.macs == max(c.macs for c in fitting)
    order = sorted(candidates, key=lambda c: latency.selection_key(c, 384))
    assert [c.macs for c in order] == sorted(c.macs for c in order)
