"""Quantization-aware distillation (--qad): the fine-tuning itself on a tiny network, the precision stage with QAD
on a reduced-size export (cache, Q/DQ rules, the TensorRT-RTX build), and the one-line refusals."""
import builtins
import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import effedge_cli, photo_folder, random_weights, tiny_model
from torch import nn

from effedge.errors import EffedgeError
from effedge.export.onnx_export import ExportOptions, export
from effedge.models import build_model
from effedge.pipeline.compile import CompileConfig, build_engine_file, compile_model
from effedge.quantize import qdq
from effedge.quantize.precision import PrecisionOptions, convert
from effedge.quantize.qad import QADOptions, cache_key, distill, distilled_state_dict, refuse


def _tiny_network():
    torch.manual_seed(1)
    network = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),
                            nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6(),
                            nn.Conv2d(32, 8, 1)).eval()
    for bn in (network[1], network[4]):  # uneven channel scales: what per-tensor int8 activations handle badly
        bn.running_var.uniform_(0.01, 4)
        bn.weight.data.uniform_(0.2, 3)
    return network


def _batches():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((2, 3, 16, 16)).astype(np.float32) for _ in range(4)]


def test_distillation_lowers_the_loss_deterministically_and_keeps_the_fp32_keys():
    network = _tiny_network()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    student, report = distill(network, _batches(), QADOptions(steps=80, lr=3e-6, seed=3, ranges="max"))
    assert report["loss_after"] < report["loss_before"]
    assert len(report["losses"]) == 80
    weights = distilled_state_dict(student)
    assert set(weights) == set(before)  # the quantizers' ranges stay out: loads into the unquantized network
    assert any(not torch.equal(weights[k], before[k]) for k in weights)  # the weights were fine-tuned
    assert all(torch.equal(network.state_dict()[k], before[k]) for k in before)  # the input is left unchanged
    _, again = distill(network, _batches(), QADOptions(steps=80, lr=3e-6, seed=3, ranges="max"))
    assert again["losses"] == report["losses"]


def test_recomputing_the_blocks_in_backward_changes_memory_not_the_result(monkeypatch):
    """Activation checkpointing on an effedge network (every MBConv block recomputed in backward) gives the same
    fine-tuned weights, bit for bit, as keeping every activation; and it really is applied."""
    from effedge.models.efficientnet import DepthwiseSeparable, InvertedResidual
    from effedge.quantize import qad

    block = dict(bn_eps=1e-3, activation="silu", padding="same", input_size=(16, 16))
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), DepthwiseSeparable(16, 16, 3, 1, 0.25, **block),
                            InvertedResidual(16, 16, 3, 1, 4, 0.25, **block),
                            InvertedResidual(16, 24, 5, 2, 4, 0.25, **block)).eval()
    batches = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(2)]
    applied = []
    original = qad.recompute_in_backward
    monkeypatch.setattr(qad, "recompute_in_backward", lambda student: applied.append(original(student)))
    recomputed, _ = distill(network, batches, QADOptions(steps=3, lr=1e-4, ranges="max"))
    assert applied == [3]
    monkeypatch.setattr(qad, "recompute_in_backward", lambda student: 0)
    kept, _ = distill(network, batches, QADOptions(steps=3, lr=1e-4, ranges="max"))
    ours, reference = distilled_state_dict(recomputed), distilled_state_dict(kept)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert any(not torch.equal(ours[k], network.state_dict()[k]) for k in ours)  # the steps did move the weights


def test_qad_is_refused_without_int8_or_without_torch(monkeypatch):
    for precision in ("fp16", "fp32"):
        with pytest.raises(EffedgeError, match="--qad fine-tunes an int8 model"):
            refuse(precision)
    with pytest.raises(EffedgeError, match="--precision fp16 has no int8"):
        PrecisionOptions(precision="fp16", qad=QADOptions()).validate()
    with pytest.raises(EffedgeError, match="--precision fp32 has no int8"):
        compile_model(CompileConfig(variant="b0", precision="fp32", qad_steps=10))
    with pytest.raises(EffedgeError, match="--qad-steps 0"):
        PrecisionOptions(precision="int8", qad=QADOptions(steps=0)).validate()
    real_import = builtins.__import__

    def no_modelopt(name, *args, **kwargs):
        if name.startswith("modelopt"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_modelopt)
    with pytest.raises(EffedgeError, match="--qad needs PyTorch and NVIDIA ModelOpt"):
        PrecisionOptions(precision="int8", qad=QADOptions()).validate()


def test_cli_refuses_qad_for_fp16_in_one_line(tmp_path):
    import onnx

    model = tmp_path / "model.onnx"
    onnx.save(tiny_model(1), str(model))
    result = effedge_cli("quantize", str(model), "--precision", "fp16", "--qad")
    assert result.returncode != 0
    assert "--qad fine-tunes an int8 model" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def qad_build(tmp_path_factory):
    """A 64 px Lite0 export from a checkpoint file (QAD rebuilds the torch model from build.json), images and a
    private cache; the int8 graph with a short QAD run."""
    root = tmp_path_factory.mktemp("qad")
    images = photo_folder(root / "images", 8, (96, 80))
    patcher = pytest.MonkeyPatch()
    patcher.setenv("EFFEDGE_CACHE_DIR", str(root / "cache"))
    checkpoint = root / "lite0.pth"
    torch.save(random_weights("lite0", 64), checkpoint)
    export("lite0", root / "build", weights=str(checkpoint), options=ExportOptions(image_size=64))
    options = PrecisionOptions(precision="int8", calib_dir=images, holdout=2, holdout_views=2,
                               qad=QADOptions(steps=6, lr=1e-5))
    report = convert(root / "build" / "model.sim.onnx", options=options)
    yield root, options, report
    patcher.undo()


def test_qad_graph_keeps_the_qdq_rules_and_is_recorded(qad_build):
    import onnx

    root, _, report = qad_build
    assert report["qad"]["cached"] is False and report["qad"]["steps"] == 6
    assert report["qad"]["loss_after"] >= 0 and report["qad"]["training_ranges"] == "deployed"
    # distilled on the 6 calibration images only: the 2 held-out photos never take part
    assert report["qad"]["images"] == report["calibration"]["images"] == 6
    model = onnx.load(str(root / "build" / "model.int8.onnx"))
    assert qdq.invalid_scales(model) == []
    summary = qdq.summary(model)
    assert summary["convolutions_int8"] > 0 and summary["zero_points_all_zero"]
    assert summary["weights_per_channel_axis0"] == summary["weight_quantizers"]
    manifest = json.loads((root / "build" / "build.json").read_text())
    assert manifest["precisions"]["int8"]["qad"]["steps"] == 6
    assert np.isfinite(report["fidelity"]["outputs"]["logits"]["sqnr_db"])
    ptq = manifest["precisions"]["int8"]["ptq_fidelity"]  # side by side: the post-training graph's figures
    assert np.isfinite(ptq["outputs"]["logits"]["sqnr_db"]) and "class_agreement" in ptq


def test_qad_trains_and_deploys_under_the_post_training_ranges(qad_build):
    """Ranges "deployed": every activation range of the QAD graph is the post-training graph's (not recalibrated on
    the fine-tuned weights), every convolution but the stem (whose graph input export normalizes into it) trains
    under its deployed input range, and the tensors quantized for other operators (residual sums) are
    fake-quantized in training too, each found."""
    import onnx

    from effedge.models.layers import Conv2d

    root, options, report = qad_build
    ptq = convert(root / "build" / "model.sim.onnx", root / "ptq", options=replace(options, qad=None))
    assert ptq["calibration"]["cached"] is True, ptq["calibration"]  # the QAD run's side-by-side calibrated
    deployed = qdq.activation_ranges(onnx.load(str(root / "ptq" / "model.int8.onnx")))
    ours = qdq.activation_ranges(onnx.load(str(root / "build" / "model.int8.onnx")))
    assert ours == deployed and len(ours) > 10
    assert report["calibration"]["ranges_from_post_training"] == len(ours)
    convolutions = sum(isinstance(m, Conv2d) for m in build_model("lite0", image_size=64).modules())
    assert report["qad"]["pinned_convolutions"] + report["qad"]["convolutions_keeping_own_range"] == convolutions
    assert report["qad"]["convolutions_keeping_own_range"] <= 1  # a uint8 graph's stem quantizes pixels
    assert report["qad"]["layers_unquantized_as_deployed"] == 1  # the classifier, which the graph keeps in fp16
    assert report["qad"]["quantized_tensors_outside_convolutions"] > 0
    assert report["qad"]["tensors_not_found_in_torch"] == 0 and report["qad"]["sites_not_reached"] == 0


@pytest.mark.slow
def test_the_student_makes_the_errors_the_deployed_graph_makes(qad_build):
    """The point of ranges "deployed": the fake-quantized student's outputs are as far from fp32 as the deployed
    int8 graph's (ONNX Runtime), so the fine-tuning corrects the errors deployment makes. ModelOpt's own placement
    and max ranges (the old default) are not a model of them."""
    import contextlib

    import onnx

    from effedge.io import read_manifest
    from effedge.export.onnx_export import deployable
    from effedge.quantize.images import ImageSet
    from effedge.quantize.precision import model_input
    from effedge.quantize.qad import CalibrationBatches, deployed_input_ranges, deployed_output_sites
    from effedge.runtime.onnxruntime import ort_session

    root, options, _ = qad_build
    source = root / "build" / "model.sim.onnx"
    ptq = convert(source, root / "ptq-fp32", options=replace(options, qad=None, high_precision="fp32"))
    deployed = onnx.load(str(root / "ptq-fp32" / ptq["file"]))
    inputs = model_input(onnx.load(str(source)), read_manifest(root / "build"))
    network = build_model("lite0", weights=read_manifest(root / "build")["weights"], image_size=(64, 64))
    wrapper = deployable(network, inputs.format).eval()
    images = ImageSet.from_folder(options.calib_dir, holdout=options.holdout, min_views=options.holdout_views)
    batches = CalibrationBatches(images, inputs)
    input_ranges = deployed_input_ranges(deployed, [name for name, _ in wrapper.named_modules()])
    sites, missing = deployed_output_sites(deployed, onnx.load(str(source)), wrapper, batches[0])
    assert missing == 0 and sites
    fp32, int8 = ort_session(source), ort_session(deployed)

    def sqnr_db(reference, ours) -> float:
        return float(10 * np.log10(np.mean(reference ** 2) / np.mean((ours - reference) ** 2)))

    def error_db(student=None) -> float:  # mean logits SQNR against fp32 over the calibration batches
        figures = []
        for batch in batches:
            reference = fp32.run(None, {inputs.name: batch})[0]
            if student is None:
                ours = int8.run(None, {inputs.name: batch})[0]
            else:
                with torch.no_grad(), student.output_quantization or contextlib.nullcontext():
                    ours = student(torch.from_numpy(batch)).numpy()
            figures.append(sqnr_db(reference, ours))
        return float(np.mean(figures))

    untrained = QADOptions(steps=1, lr=1e-12)
    matched, _ = distill(wrapper, batches, untrained, input_ranges=input_ranges, output_sites=sites)
    modelopt, _ = distill(wrapper, batches, replace(untrained, ranges="max"))
    graph = error_db()
    assert abs(error_db(matched) - graph) < 1.0
    assert abs(error_db(modelopt) - graph) > abs(error_db(matched) - graph)


def test_call_sites_are_named_alike_in_forward_and_in_backward_recomputation():
    """A checkpointed block recomputes its forward in backward without its module call: its torch calls must get
    the names they had in forward (or the recomputation, which the gradient flows through, would not be
    fake-quantized as the forward was)."""
    from effedge.models.efficientnet import InvertedResidual
    from effedge.quantize.qad import CallSites, recompute_in_backward

    block = dict(bn_eps=1e-3, activation="silu", padding="same", input_size=(16, 16))
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), InvertedResidual(16, 16, 3, 1, 4, 0.25, **block),
                            InvertedResidual(16, 16, 3, 1, 4, 0.25, **block)).eval()
    assert recompute_in_backward(network) == 2
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    seen: dict[str, list] = {"forward": [], "backward": []}
    phase = ["forward"]

    def record(site, out):
        seen[phase[0]].append(site)
        return out

    backwards = []
    with CallSites(network, record) as sites:
        for _ in range(3):  # a recomputation stopped early must not leave frames that name later calls
            seen["forward"], seen["backward"], phase[0] = [], [], "forward"
            out = network(torch.randn(1, 3, 16, 16))
            phase[0] = "backward"
            out.square().mean().backward()
            assert sites.depth() == 0
            backwards.append(seen["backward"])
    in_blocks = {site for site in seen["forward"] if site.module.split(".")[0] in ("1", "2")}
    assert seen["backward"] and set(seen["backward"]) <= in_blocks
    assert {site.module.split(".")[0] for site in seen["backward"]} == {"1", "2"}  # both blocks were recomputed
    assert backwards[0] == backwards[1] == backwards[2]


def test_a_call_site_is_fake_quantized_at_its_deployed_range():
    """The output of a named call (here a residual sum) is rounded to the int8 grid of its range and clipped to
    it, inside the context only."""
    from effedge.quantize.qad import output_quantization

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return torch.add(self.conv(x), x)

    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Residual()).eval()
    batches = [np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)]
    student, _ = distill(network, batches, QADOptions(steps=1, lr=1e-12, ranges="max"))
    context = output_quantization(student, {("1", "add", 0, (1, 8, 8, 8)): 0.5})
    x = torch.from_numpy(batches[0])
    with torch.no_grad():
        plain = student(x)
        with context:
            quantized = student(x)
    assert context.hits == {("1", "add", 0, (1, 8, 8, 8))}
    assert float(plain.abs().max()) > 0.6  # the range clips something
    steps = quantized.numpy() / (0.5 / 127)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert float(quantized.max()) <= 0.5 + 1e-6 and float(quantized.min()) >= -0.5 * 128 / 127 - 1e-6


def test_mixed_qad_keeps_the_blocks_the_post_training_search_kept(qad_build):
    """Mixed + QAD: the student trains with the post-training mixed graph's fp16 blocks unquantized, so the QAD
    graph keeps those same blocks (a new search could put blocks the student never saw quantized into int8)."""
    from effedge.quantize.fidelity import min_sqnr

    root, options, report = qad_build
    mixed = replace(options, precision="mixed", fidelity_target=min_sqnr(report["ptq_fidelity"]) + 2.0)
    ptq = convert(root / "build" / "model.sim.onnx", root / "mixed-ptq", options=replace(mixed, qad=None))
    assert 0 < len(ptq["kept_fp16"]) < len(ptq["sensitivity"])
    ours = convert(root / "build" / "model.sim.onnx", root / "mixed-qad", options=mixed)
    assert ours["kept_fp16"] == ptq["kept_fp16"]
    assert ours["qad"]["layers_unquantized_as_deployed"] > 1  # the kept blocks' convolutions, and the classifier


def test_a_convolution_called_at_two_sizes_gets_each_calls_deployed_range():
    """A head convolution shared by the pyramid levels quantizes each level's input at that level's range (one range
    per module would clip one level and waste bits on the other)."""
    from effedge.quantize.qad import pin_input_ranges

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x).mean() + self.conv(nn.functional.avg_pool2d(x, 2)).mean()

    batches = [np.full((1, 3, 8, 8), 3.0, np.float32)]
    student, _ = distill(Shared().eval(), batches, QADOptions(steps=1, lr=1e-12, ranges="max"))
    assert pin_input_ranges(student, {"conv": {(8, 8): 0.5, (4, 4): 2.0}}) == (1, 0, 0)
    seen = {}
    student.conv.input_quantizer.register_forward_hook(
        lambda module, args, out: seen.__setitem__(tuple(out.shape[-2:]), float(out.max())))
    with torch.no_grad():
        student(torch.from_numpy(batches[0]))
    assert seen[(8, 8)] == pytest.approx(0.5, rel=1e-3) and seen[(4, 4)] == pytest.approx(2.0, rel=1e-3)


def test_a_scaled_copy_of_a_tensor_is_found_with_its_scale():
    """Export folds constant scales into convolutions: the graph's tensor may be k × the torch one (k > 0)."""
    from effedge.quantize.qad import _scale_between, _signature

    rng = np.random.default_rng(0)
    tensor = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    assert _scale_between(_signature(tensor), _signature(0.37 * tensor)) == pytest.approx(0.37, rel=1e-6)
    assert _scale_between(_signature(tensor), _signature(tensor + 1e-6)) == pytest.approx(1.0, rel=1e-5)
    assert _scale_between(_signature(tensor), _signature(-tensor)) is None
    assert _scale_between(_signature(tensor), _signature(rng.standard_normal(tensor.shape))) is None


def test_a_large_tensor_is_signed_on_values_spread_over_its_planes():
    """Big tensors are signed on a strided subset; it must still tell them apart wherever they differ, per sample,
    whatever their memory layout. 512 × 128 × 128 at a plain stride of 128 would read column 0 alone."""
    from effedge.quantize.qad import SIGNATURE_VALUES, _scale_between, _signature

    rng = np.random.default_rng(1)
    tensor = rng.standard_normal((2, 8, 130, 130)).astype(np.float32)  # 135 200 values a sample: strided
    assert tensor[0].size > SIGNATURE_VALUES
    assert _scale_between(_signature(tensor), _signature(2.5 * tensor)) == pytest.approx(2.5, rel=1e-6)
    assert _scale_between(_signature(tensor), _signature(rng.standard_normal(tensor.shape))) is None
    other_second = tensor.copy()
    other_second[1] = rng.standard_normal(tensor.shape[1:])
    assert _scale_between(_signature(tensor), _signature(other_second)) is None  # samples are signed apart
    channels_last = np.ascontiguousarray(tensor.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert np.array_equal(_signature(channels_last), _signature(tensor))
    border = np.zeros((1, 512, 128, 128), np.float32)  # two tensors that agree on their first column only
    border[..., 0] = rng.standard_normal((1, 512, 128))
    inside = border.copy()
    inside[..., 1:] = rng.standard_normal((1, 512, 128, 127))
    assert _scale_between(_signature(border), _signature(inside)) is None


def test_bifpn_fusion_weights_stay_as_exported():
    """Export folds the fusion weights into the convolutions before them, so the deployed ranges of those tensors
    hold only for the weights they were calibrated with: the fine-tuning leaves them alone, and trains the rest."""
    class Fusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.edge_weights = nn.Parameter(torch.tensor([1.0, 0.5]))

        def forward(self, x):
            y, weights = self.conv(x), torch.relu(self.edge_weights)
            return weights[0] * y + weights[1] * y.flip(-1)

    network = Fusion().eval()
    student, _ = distill(network, _batches(), QADOptions(steps=5, lr=1e-3, ranges="max"))
    weights = distilled_state_dict(student)
    assert torch.equal(weights["edge_weights"], torch.tensor([1.0, 0.5]))
    assert not torch.equal(weights["conv.weight"], network.conv.weight)


def test_exported_node_names_lead_to_their_modules():
    from effedge.quantize.qad import module_of_node

    modules = {"model.backbone.blocks.3.1.conv_pw", "model.box_net.predict.conv_pw", "model.fpn.cell.0.fnode.7"}
    assert module_of_node("/model/backbone/blocks.3/blocks.3.1/conv_pw/Conv", modules) == \
        "model.backbone.blocks.3.1.conv_pw"
    assert module_of_node("/model/box_net/predict/conv_pw_4/Conv", modules) == "model.box_net.predict.conv_pw"
    assert module_of_node("/model/fpn/cell.0/fnode.7/Add", modules) == "model.fpn.cell.0.fnode.7"
    assert module_of_node("/model/backbone/blocks.3/blocks.3.2/conv_pw/Conv", modules) is None


def test_qad_rerun_is_a_cache_hit(qad_build):
    root, options, _ = qad_build
    messages = []
    again = convert(root / "build" / "model.sim.onnx", options=options, log=messages.append)
    assert again["qad"]["cached"] is True
    # the post-training side-by-side is a calibration cache hit; the QAD graph takes its ranges, calibrating none
    assert sum(m.startswith("calibration: cache hit") for m in messages) == 1
    assert not any(m.startswith("calibrating on") for m in messages)
    assert again["calibration"]["ranges_from_post_training"] == again["calibration"]["tensors"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                    reason="TensorRT-RTX is not installed (pip install 'effedge[rtx]')")
def test_qad_graph_builds_with_tensorrt_rtx(qad_build):
    root, _, _ = qad_build
    report = build_engine_file(root / "build" / "model.int8.onnx", backend="tensorrt-rtx")
    assert report["product"] == "TensorRT-RTX" and report["bytes"] > 0


def test_percentile_training_ranges_cut_the_outliers_max_keeps():
    """--qad ranges "percentile": the input quantizers train under the 99.99th percentile of |x| (as effedge's
    default calibration deploys), not the max; one outlier value in 49152 sets the max range alone."""
    from effedge.quantize.qad import learned_ranges

    batches = [np.random.default_rng(i).standard_normal((1, 3, 128, 128)).astype(np.float32) for i in range(2)]
    for batch in batches:
        batch[0, 0, 0, 0] = 50.0
    with_max, _ = distill(_tiny_network(), batches, QADOptions(steps=1, lr=1e-9, ranges="max"))
    cut, report = distill(_tiny_network(), batches, QADOptions(steps=1, lr=1e-9, ranges="percentile"))
    assert report["ranges"] == "percentile"
    assert learned_ranges(with_max)["0"] == pytest.approx(50.0)
    assert learned_ranges(cut)["0"] < 10.0
    with pytest.raises(EffedgeError, match="QAD training ranges 'mse'"):
        QADOptions(ranges="mse").validate()


def test_the_score_weighted_loss_counts_the_anchors_fp32_detects():
    """Detector outputs (class logits, box regression, boxes, scores): the same error costs more at an anchor where
    fp32 is sure of a class than at a background one; a classifier's single output is refused."""
    from effedge.quantize.qad import score_weighted_mse

    torch.manual_seed(0)
    logits = torch.full((1, 100, 4), -6.0)
    logits[0, 7, 2] = 4.0  # the one anchor fp32 detects
    regression, boxes = torch.randn(1, 100, 4), torch.rand(1, 100, 4) * 256
    teacher = (logits, regression, boxes, torch.sigmoid(logits))

    def moved(anchor: int):
        shifted = regression.clone()
        shifted[0, anchor] += 0.5
        return logits, shifted, boxes, torch.sigmoid(logits)

    assert float(score_weighted_mse(teacher, teacher)) == 0.0
    assert float(score_weighted_mse(moved(7), teacher)) > 20 * float(score_weighted_mse(moved(50), teacher))
    with pytest.raises(EffedgeError, match="'score-weighted' is for detectors"):
        score_weighted_mse(logits, logits)


def test_the_kl_loss_weighs_the_probable_classes_and_refuses_detectors():
    """KL(fp32 softmax ‖ int8 softmax): 0 for equal logits, equal for logits shifted by a constant (softmax ignores
    it), and the same error costs far more on the leading class than on an improbable one; detector outputs are
    refused."""
    from effedge.quantize.qad import softmax_kl

    teacher = torch.tensor([[6.0, 4.0, -3.0, -3.0, -3.0]])

    def moved(index: int):
        shifted = teacher.clone()
        shifted[0, index] -= 1.0
        return shifted

    assert float(softmax_kl(teacher, teacher)) == 0.0
    assert float(softmax_kl(teacher + 5.0, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(softmax_kl(moved(0), teacher)) > 100 * float(softmax_kl(moved(3), teacher))
    expected = torch.sum(torch.softmax(teacher, -1) * (torch.log_softmax(teacher, -1) - torch.log_softmax(moved(1), -1)))
    assert float(softmax_kl(moved(1), teacher)) == pytest.approx(float(expected))
    with pytest.raises(EffedgeError, match="'kl' is for classifiers"):
        softmax_kl((teacher[None], teacher[None]), (teacher[None], teacher[None]))


def test_distillation_reports_its_loss_as_it_goes():
    messages = []
    distill(_tiny_network(), _batches(), QADOptions(steps=10, lr=3e-6, ranges="max"), log=messages.append)
    assert [m for m in messages if m.startswith("QAD step ")][-1].startswith("QAD step 10/10: distillation loss ")


def test_every_effedge_convolution_is_fake_quantized():
    """effedge's padded Conv2d is an nn.Conv2d subclass that ModelOpt would leave in fp32 unless registered."""
    from effedge.models import build_model
    from effedge.models.layers import Conv2d

    network = build_model("lite0", image_size=32)
    convolutions = sum(isinstance(m, Conv2d) for m in network.modules())
    student, _ = distill(network, [np.zeros((1, 3, 32, 32), np.float32)], QADOptions(steps=1, ranges="max"))
    quantized = sum(getattr(getattr(m, "weight_quantizer", None), "is_enabled", False) for m in student.modules())
    assert quantized >= convolutions > 0


def test_every_output_is_distilled_towards_its_own_fp32_output():
    """A two-output network whose outputs differ in scale: pairing an output with the other's target would make
    the relative loss about 1 from the start."""
    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _tiny_network()

        def forward(self, x):
            y = self.body(x)
            return y, 100 * y + 5

    _, report = distill(TwoOutputs().eval(), _batches(), QADOptions(steps=2, lr=3e-6, ranges="max"))
    assert report["loss_before"] < 0.5 and report["batches"] == 4


def test_cache_key_changes_with_every_setting_that_changes_the_graph(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import effedge.quantize.qad as qad

    source = tmp_path / "model.sim.onnx"
    source.write_bytes(b"graph")
    images = SimpleNamespace(content_hash=lambda: "images")
    preprocessing = SimpleNamespace(describe=lambda: "imagenet")
    inputs = SimpleNamespace(format="nchw", size=(64, 64), batch=1, preprocessing=preprocessing)
    base = QADOptions(steps=6, lr=1e-5, seed=0)
    key = cache_key(source, images, inputs, base)
    assert cache_key(source, images, inputs, base) == key
    for changed in (QADOptions(7, 1e-5, 0), QADOptions(6, 2e-5, 0), QADOptions(6, 1e-5, 1),
                    QADOptions(6, 1e-5, 0, ranges="max" if base.ranges == "percentile" else "percentile")):
        assert cache_key(source, images, inputs, changed) != key
    assert cache_key(source, SimpleNamespace(content_hash=lambda: "other"), inputs, base) != key
    assert cache_key(source, images, SimpleNamespace(**{**vars(inputs), "batch": 2}), base) != key
    ranges = {"a": 1.0, "b": 2.0}
    assert cache_key(source, images, inputs, base, ranges) != key
    assert cache_key(source, images, inputs, base, {**ranges, "b": 2.5}) != cache_key(source, images, inputs, base,
                                                                                     ranges)
    source.write_bytes(b"other graph")
    changed_source = cache_key(source, images, inputs, base)
    assert changed_source != key
    monkeypatch.setattr(qad, "ALGORITHM_VERSION", qad.ALGORITHM_VERSION + 1)  # a fix that changes the result
    assert cache_key(source, images, inputs, base) != changed_source


@pytest.mark.slow
def test_qad_of_a_pixels_graph_distills_on_pixel_values(tmp_path, monkeypatch):
    """--input-format pixels: QAD's PyTorch rebuild normalizes inside as the graph does and trains on the same
    0-255 batches calibration reads; the fine-tuned graph still takes (and says it takes) pixels."""
    import onnx
    from helpers import input_sensitive_weights

    from effedge.quantize import qad
    from effedge.runtime.onnxruntime import OnnxRuntimeRunner

    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    images = photo_folder(tmp_path / "images", 6, (96, 80))
    checkpoint = tmp_path / "lite0.pth"
    torch.save(input_sensitive_weights("lite0", 64), checkpoint)  # its logits follow the image (and its scale)
    export("lite0", tmp_path / "build", weights=str(checkpoint),
           options=ExportOptions(image_size=64, input_format="pixels"))
    seen = {}
    real_distill = qad.distill

    def recording(wrapper, batches, *args, **kwargs):
        seen["batches"] = batches
        with torch.no_grad():  # the rebuilt wrapper answers as the exported graph on the same pixel batch
            seen["torch"] = wrapper(torch.from_numpy(batches[0])).numpy()
        return real_distill(wrapper, batches, *args, **kwargs)

    monkeypatch.setattr(qad, "distill", recording)
    report = convert(tmp_path / "build" / "model.sim.onnx",
                     options=PrecisionOptions(precision="int8", calib_dir=images, holdout=2, holdout_views=2,
                                              qad=QADOptions(steps=4, lr=1e-5)))
    first = seen["batches"][0]
    assert first.shape == (1, 3, 64, 64) and first.max() > 100 and first.min() >= 0  # pixel values, NCHW
    with OnnxRuntimeRunner(tmp_path / "build" / "model.sim.onnx") as runner:
        np.testing.assert_allclose(seen["torch"], runner.infer({"images": first})["logits"], rtol=1e-4, atol=1e-4)
    assert report["qad"]["steps"] == 4 and report["input"]["format"] == "pixels"
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "build" / "model.int8.onnx")).metadata_props}
    assert props["effedge.input.format"] == "pixels"


def test_calibration_batches_leave_out_files_already_recorded_as_unreadable(tmp_path):
    """The readable-file pass must not depend on what ``skipped`` already holds: a second CalibrationBatches on the
    same ImageSet (its unreadable file recorded by the first) still leaves that file out."""
    from effedge.quantize.images import ImageSet
    from effedge.quantize.precision import ModelInput
    from effedge.quantize.qad import CalibrationBatches

    folder = photo_folder(tmp_path / "images", 3, (40, 32))
    (folder / "broken.jpg").write_bytes(b"not an image")
    images = ImageSet(folder, sorted(folder.iterdir()), [])
    inputs = ModelInput("images", "float", (32, 32), 1)
    first = CalibrationBatches(images, inputs)
    second = CalibrationBatches(images, inputs)
    assert first.images == second.images == 3 and len(second) == 3
    assert [b.shape for b in second] == [(1, 3, 32, 32)] * 3
    assert [e[0] for e in images.skipped] == ["broken.jpg"]


def test_calibration_batches_refuse_a_file_that_changed_after_the_readable_pass(tmp_path):
    """A file readable when the batches were laid out but not when its batch is prepared: an error naming it,
    not a StopIteration (which a loop over the batches would take for their end) or a silently shorter batch."""
    from effedge.quantize.images import ImageSet
    from effedge.quantize.precision import ModelInput
    from effedge.quantize.qad import CalibrationBatches

    for batch in (1, 2):
        folder = photo_folder(tmp_path / f"images{batch}", 3, (40, 32))
        batches = CalibrationBatches(ImageSet(folder, sorted(folder.iterdir()), []),
                                     ModelInput("images", "float", (32, 32), batch))
        (folder / "0.jpg").write_bytes((folder / "0.jpg").read_bytes()[:10])
        with pytest.raises(EffedgeError, match="calibration file 0.jpg can no longer be read"):
            batches[0]
        assert batches[1].shape == (batch, 3, 32, 32)  # the others still load
