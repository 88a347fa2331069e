"""Quantization-aware distillation (QAD): the step after calibration that needs nothing but the calibration images.

The PyTorch model (rebuilt from the build directory's build.json) is fake-quantized with NVIDIA ModelOpt
(``mtq.quantize``: weights int8 per output channel, activations int8 per tensor, ranges from a max-calibration
forward loop over the calibration images), then its weights and biases are fine-tuned, through ModelOpt's
straight-through fake quantization, so that its raw outputs reproduce the fp32 model's own outputs on the same
images — no labels. ModelOpt keeps the ranges as fixed buffers: they are not learned. The fine-tuned fp32 weights
are what comes out (:func:`distilled_state_dict`): they go through the normal export path, then effedge's own
Q/DQ placement and *recalibrated* ranges (:func:`fine_tuned_source`, called by the precision stage), so the int8
graph obeys every rule the post-training one does; fidelity is still measured against the original fp32 model.

Loss: mean squared error of every floating-point output, each divided by the fp32 output's own mean square (so a
detector's logits and its boxes in pixels weigh alike, and the loss is a relative error: 0.01 ≈ 20 dB SQNR). MSE
on raw outputs (logits, head outputs) is what the fidelity report measures (SQNR) and needs no choice of
temperature or score threshold; on logits it also bounds the KL of the class scores.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from effedge.errors import EffedgeError
from effedge.io import atomic_write, cache_root, private_tempdir, read_manifest, sha256_file

DEFAULT_STEPS = 200
DEFAULT_LR = 1e-5
# Bump when the fine-tuning changes its result for the same inputs (which layers are fake-quantized, the loss,
# the schedule): cached graphs of an older version are then not served. 2: effedge's padded Conv2d is quantized.
ALGORITHM_VERSION = 2
# "max": ModelOpt's max calibration; "percentile": ModelOpt's histogram calibrator cut at TRAINING_PERCENTILE, as
# effedge's default percentile calibration cuts the deployed ranges.
TRAINING_RANGES = ("max", "percentile")
DEFAULT_RANGES = "max"
TRAINING_PERCENTILE = 99.99
# "relative-mse": every output alike; "score-weighted" (detectors): each anchor's errors weigh by fp32's best class
# score there plus SCORE_FLOOR, so the anchors that become detections count, not the thousands of background ones.
# "kl" (classifiers): KL(fp32 softmax ‖ int8 softmax), whose gradient (p_int8 − p_fp32) falls on the classes that
# carry probability, where top-1 is decided, rather than on the 1000 logits alike.
LOSSES = ("relative-mse", "score-weighted", "kl")
DEFAULT_LOSS = "relative-mse"
SCORE_FLOOR = 0.01
LOSS_DESCRIPTIONS = {
    "relative-mse": "mean squared error of each raw output relative to the fp32 output's mean square",
    "score-weighted": f"relative mean squared error of each raw output, each anchor weighted by fp32's best class "
                      f"score there + {SCORE_FLOOR}",
    "kl": "KL divergence of the int8 class probabilities (softmax of the logits) from fp32's, in nats"}
LOSS_SAMPLE = 16  # batches the reported loss before and after is measured on
QUANTIZER_KEY = "_quantizer."  # ModelOpt's state-dict entries of the quantizers (input_quantizer._amax, …)

Progress = Callable[[Iterable, int, str], Iterable]


@dataclass(frozen=True)
class QADOptions:
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    seed: int = 0
    ranges: str = DEFAULT_RANGES  # the activation ranges the fine-tuning trains under (see TRAINING_RANGES)
    loss: str = DEFAULT_LOSS  # see LOSSES

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise EffedgeError(f"QAD loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.ranges not in TRAINING_RANGES:
            raise EffedgeError(f"QAD training ranges {self.ranges!r}: use one of {', '.join(TRAINING_RANGES)}")
        if self.steps < 1:
            raise EffedgeError(f"--qad-steps {self.steps}: use at least 1 (default {DEFAULT_STEPS})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise EffedgeError(f"--qad-lr {self.lr} must be a positive number, e.g. {DEFAULT_LR}")


def refuse(precision: str) -> None:
    """Raise the one-line refusal where QAD cannot apply: a precision without int8, or no torch/ModelOpt."""
    if precision not in ("int8", "mixed"):
        raise EffedgeError(f"--qad fine-tunes an int8 model; --precision {precision} has no int8 "
                           "(use --precision int8)")
    _mtq()


def _mtq():
    try:
        import torch  # noqa: F401
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise EffedgeError(f"--qad needs PyTorch and NVIDIA ModelOpt's torch quantization ({exc}); install the "
                           "workstation extra: pip install -e '.[workstation]'") from exc
    _register_effedge_layers(mtq)
    return mtq


def _register_effedge_layers(mtq) -> None:
    """ModelOpt replaces modules by exact class: effedge's padded Conv2d (an ``nn.Conv2d`` subclass) would stay
    unquantized (only the classifier's Linear was, before this). Register it as a per-channel int8 convolution;
    its forward pads, then runs ``nn.Conv2d`` on the quantized input and weight."""
    from modelopt.torch.quantization import tensor_quant
    from modelopt.torch.quantization.nn import QuantModuleRegistry
    from modelopt.torch.quantization.nn.modules.quant_module import QuantLinearConvBase

    from effedge.models.layers import Conv2d

    if QuantModuleRegistry.get(Conv2d) is not None:
        return

    class QuantPaddedConv2d(QuantLinearConvBase):
        default_quant_desc_weight = tensor_quant.QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL

    mtq.register(original_cls=Conv2d, quantized_cls=QuantPaddedConv2d)


def _relative_mse(student, teacher):
    import torch

    students = student if isinstance(student, (tuple, list)) else (student,)
    teachers = teacher if isinstance(teacher, (tuple, list)) else (teacher,)
    terms = [torch.mean((s - t) ** 2) / torch.mean(t ** 2).clamp_min(1e-12)
             for s, t in zip(students, teachers) if t.is_floating_point()]
    return sum(terms) / len(terms)


def score_weighted_mse(student, teacher):
    """The "score-weighted" loss of a detector's outputs (class logits, box regression, boxes, scores): each
    output's relative squared error with each anchor weighted by fp32's best class score there + SCORE_FLOOR."""
    import torch

    if not (isinstance(teacher, (tuple, list)) and len(teacher) == 4):
        raise EffedgeError("the QAD loss 'score-weighted' is for detectors (class logits, box regression, boxes, "
                           "scores); use 'relative-mse'")
    weight = teacher[3].max(dim=-1, keepdim=True).values + SCORE_FLOOR  # [batch, anchors, 1]
    terms = [torch.mean(weight * (s - t) ** 2) / torch.mean(weight * t ** 2).clamp_min(1e-12)
             for s, t in zip(student, teacher)]
    return sum(terms) / len(terms)


def softmax_kl(student, teacher):
    """The "kl" loss of a classifier's logits: KL(softmax(fp32) ‖ softmax(int8)), mean over the batch."""
    import torch

    students = student if isinstance(student, (tuple, list)) else (student,)
    teachers = teacher if isinstance(teacher, (tuple, list)) else (teacher,)
    if len(teachers) != 1 or teachers[0].dim() != 2:
        raise EffedgeError("the QAD loss 'kl' is for classifiers (one [batch, classes] logits output); use "
                           "'relative-mse' or 'score-weighted'")
    log_fp32 = torch.log_softmax(teachers[0], dim=-1)
    return torch.sum(log_fp32.exp() * (log_fp32 - torch.log_softmax(students[0], dim=-1)), dim=-1).mean()


def distill(module, batches: Sequence[np.ndarray], options: QADOptions = QADOptions(), *,
            progress: Progress = lambda items, total, description: items,
            log: Callable[[str], None] = lambda message: None) -> tuple[object, dict]:
    """Fine-tune a fake-quantized copy of ``module`` (a torch module, left unchanged) to reproduce its outputs on
    ``batches`` (calibration inputs, as the graph takes them; any sequence, read one item at a time, so it may
    prepare each when asked: see :class:`CalibrationBatches`). Returns (the fake-quantized student, report with
    the loss before and after, on up to :data:`LOSS_SAMPLE` batches, and per step). Deterministic for a given seed."""
    import torch

    options.validate()
    mtq = _mtq()
    loss_of = {"relative-mse": _relative_mse, "score-weighted": score_weighted_mse, "kl": softmax_kl}[options.loss]
    if not batches:
        raise EffedgeError("QAD needs at least one calibration image")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        teacher = copy.deepcopy(module).eval()
        student = copy.deepcopy(module).eval()

        # Inputs and the teacher's outputs are made when a step needs them, not kept for every image: at D5 one
        # image's outputs alone take 110 MB, so 300 of them would not fit a workstation.
        def pair(index: int):
            x = torch.from_numpy(np.ascontiguousarray(batches[index]))
            with torch.no_grad():
                return x, teacher(x)

        # The loss before and after is reported on at most LOSS_SAMPLE evenly spread batches: over all 184 images
        # of the shapes fixture the two passes were 736 forwards, nearly what the 200 steps cost.
        count = min(LOSS_SAMPLE, len(batches))
        sample = [round(i * (len(batches) - 1) / max(1, count - 1)) for i in range(count)]

        def mean_loss() -> float:
            with torch.no_grad():
                return float(sum(float(loss_of(student(x), t)) for x, t in map(pair, sample)) / len(sample))

        def forward_loop(model) -> None:
            with torch.no_grad():
                for index in range(len(batches)):
                    model(torch.from_numpy(np.ascontiguousarray(batches[index])))

        with contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints "Inserted N quantizers": the CLI's output is ours
            student = _quantized(mtq, student, forward_loop, options.ranges)
        recompute_in_backward(student)
        # BatchNorm statistics stay the fp32 model's (eval mode): only weights, biases and ranges move.
        parameters = list(student.parameters())  # built models come frozen (inference): train them all here
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(parameters, lr=options.lr)
        order = torch.randperm(len(batches) * ((options.steps + len(batches) - 1) // len(batches))) % len(batches)
        initial = mean_loss()
        losses = []
        for step in progress(range(options.steps), options.steps, "distilling"):
            x, target = pair(int(order[step]))
            loss = loss_of(student(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if (step + 1) % max(1, options.steps // 5) == 0:  # above the progress bar: the loss as it goes
                recent = losses[-max(1, options.steps // 5):]
                log(f"QAD step {step + 1}/{options.steps}: distillation loss {sum(recent) / len(recent):.4g}")
        final = mean_loss()
    log(f"distillation loss {initial:.4g} -> {final:.4g} over {options.steps} steps")
    return student, {"steps": options.steps, "lr": options.lr, "seed": options.seed, "ranges": options.ranges,
                     "batches": len(batches),
                     "loss_before": initial, "loss_after": final, "losses": losses,
                     "loss": LOSS_DESCRIPTIONS[options.loss]}


def _quantized(mtq, student, forward_loop, ranges: str):
    """``student`` fake-quantized (int8 weights per channel, activations per tensor) with ranges from
    ``forward_loop``: ModelOpt's max calibration, or for "percentile" the input quantizers' histograms cut at
    :data:`TRAINING_PERCENTILE` (weights keep their max)."""
    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    if ranges == "max":
        return mtq.quantize(student, config, forward_loop)
    from modelopt.torch.quantization.calib import HistogramCalibrator
    from modelopt.torch.quantization.model_calib import enable_stats_collection
    from modelopt.torch.quantization.nn import TensorQuantizer

    for entry in config["quant_cfg"]:
        if entry.get("quantizer_name") == "*input_quantizer":
            entry["cfg"] = {**entry["cfg"], "calibrator": "histogram"}
    config["algorithm"] = None  # calibrated below: ModelOpt's own loop cannot cut histograms at a percentile
    student = mtq.quantize(student, config)
    enable_stats_collection(student)
    forward_loop(student)
    for quantizer in student.modules():
        if isinstance(quantizer, TensorQuantizer) and not quantizer._disabled:
            if isinstance(quantizer._calibrator, HistogramCalibrator):
                quantizer.load_calib_amax("percentile", percentile=TRAINING_PERCENTILE)
            else:
                quantizer.load_calib_amax()
            quantizer.enable_quant()
            quantizer.disable_calib()
    return student


def recompute_in_backward(network) -> int:
    """Activation checkpointing on every block of ``network`` (:data:`effedge.models.RECOMPUTABLE_BLOCKS`): a
    training step keeps only each block's input and recomputes the block's inner activations during backward
    (the same values: the fake quantization is deterministic). Memory then grows with the number of blocks, not
    with every activation of the network: the difference between a D5 step fitting a workstation or not, for one
    more forward's time per step. Returns the number of blocks."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from effedge.models import RECOMPUTABLE_BLOCKS

    def recomputed(forward, *args):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False)
        return forward(*args)

    blocks = [m for m in network.modules() if isinstance(m, RECOMPUTABLE_BLOCKS)]
    for block in blocks:
        block.forward = functools.partial(recomputed, block.forward)
    return len(blocks)


class CalibrationBatches(Sequence):
    """The calibration images of an :class:`~effedge.quantize.images.ImageSet` as the graph takes them, in
    batches of the graph's static batch (a last one filled up with repeats), each prepared when asked for: memory
    does not grow with the number of images. Unreadable files are left out (and recorded in the set), as in
    calibration."""

    def __init__(self, images, inputs) -> None:
        self._images, self._inputs = images, inputs
        readable = []
        for path in images.calibration:  # one decoding pass: which files are images, so batches stay fixed
            # a file yields a batch or is recorded as skipped (once: a file already recorded adds nothing)
            if next(images.padded_batches([path], inputs.size, inputs.format, 1, inputs.preprocessing),
                    None) is not None:
                readable.append(path)
        self.images = len(readable)
        self._groups = [readable[i:i + inputs.batch] for i in range(0, len(readable), inputs.batch)]

    def __len__(self) -> int:
        return len(self._groups)

    def __getitem__(self, index: int) -> np.ndarray:
        inputs, group = self._inputs, self._groups[index]
        batch, real = next(self._images.padded_batches(group, inputs.size, inputs.format, inputs.batch,
                                                       inputs.preprocessing), (None, 0))
        if real != len(group):  # read once already: the file changed since (a StopIteration would end loops early)
            names = {str(p.relative_to(self._images.root)) for p in group}
            file, reason = next(entry for entry in self._images.skipped if entry[0] in names)
            raise EffedgeError(f"calibration file {file} can no longer be read ({reason}): it changed during QAD; "
                               "rerun with the folder unchanged")
        return batch


def distilled_state_dict(student) -> dict:
    """The fine-tuned fp32 weights of a :func:`distill` student, under the original module's keys (the
    quantizers' ranges left out): ``module.load_state_dict(...)`` puts them into the unquantized network."""
    return {key: value.detach().clone() for key, value in student.state_dict().items() if QUANTIZER_KEY not in key}


def learned_ranges(student) -> dict[str, float]:
    """{module name: learned activation amax} of the student's per-tensor input quantizers."""
    ranges = {}
    for name, sub in student.named_modules():
        quantizer = getattr(sub, "input_quantizer", None)
        amax = getattr(quantizer, "amax", None) if quantizer is not None else None
        if amax is not None and getattr(quantizer, "is_enabled", True):
            ranges[name] = float(amax.detach().abs().max())
    return ranges


def cache_key(source: Path, images, inputs, options: QADOptions) -> str:
    """What a fine-tuned graph is cached under: everything that changes it (source graph, calibration images,
    settings, input, tool versions and :data:`ALGORITHM_VERSION`)."""
    import hashlib
    import json

    from effedge.provenance import cache_identity

    identity = json.dumps([ALGORITHM_VERSION, sha256_file(source), images.content_hash(), options.steps, options.lr,
                           options.seed, options.ranges, options.loss, inputs.format, list(inputs.size),
                           inputs.batch,
                           inputs.preprocessing.describe(),
                           cache_identity("torch", "onnx", "onnxsim", "nvidia-modelopt")])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def fine_tuned_source(source, images, inputs, options: QADOptions, *, log: Callable[[str], None],
                      progress: Progress) -> tuple[object, dict]:
    """The fp32 ONNX graph of ``source``'s build with QAD-fine-tuned weights, distilled on the calibration
    images of ``images`` (held-out photos never take part). Cached by content (source graph, images, settings,
    tool versions): a re-run does not retrain. Returns (path of the cached graph, report)."""
    import json

    options.validate()
    _mtq()
    source = Path(source)
    key = cache_key(source, images, inputs, options)
    cached, cached_report = cache_root() / "qad" / f"{key}.onnx", cache_root() / "qad" / f"{key}.json"
    if cached.is_file() and cached_report.is_file():
        from effedge.cache import mark_used

        report = json.loads(cached_report.read_text())
        mark_used(cached)
        log(f"QAD: cache hit ({options.steps} steps), not retraining")
        return cached, {**report, "cached": True}
    import time

    import onnx
    import torch

    from effedge.export.onnx_export import deployable, output_names, torch_export
    from effedge.export.simplify import simplify_model
    from effedge.models import build_model

    manifest = read_manifest(source.parent)
    weights = manifest.get("weights")
    if weights in ("random", None):
        weights = None
    elif weights == "<state dict>" or not isinstance(weights, str):
        raise EffedgeError("--qad rebuilds the PyTorch model from build.json, but this build was exported from an "
                           "in-memory state dict; export it from a checkpoint file")
    height, width = inputs.size
    clock = time.perf_counter()
    network = build_model(manifest["variant"], weights=weights, num_classes=manifest.get("num_classes"),
                          image_size=(height, width), pad=manifest.get("pad", "same"))
    wrapper = deployable(network, inputs.format).eval()
    batches = CalibrationBatches(images, inputs)
    log(f"QAD: distilling int8 towards fp32 on {batches.images} calibration images, {options.steps} steps")
    student, report = distill(wrapper, batches, options, progress=progress, log=log)
    wrapper.load_state_dict(distilled_state_dict(student))
    source_model = onnx.load(str(source))
    opset = max(o.version for o in source_model.opset_import if o.domain in ("", "ai.onnx"))
    is_detector = manifest.get("family") == "efficientdet"
    with private_tempdir() as tmp:
        torch_export(wrapper, torch.from_numpy(batches[0]), tmp / "qad.onnx", output_names(is_detector), opset, None)
        graph = simplify_model(onnx.load(str(tmp / "qad.onnx")))
    onnx.helper.set_model_props(graph, {p.key: p.value for p in source_model.metadata_props})
    report = {**{k: v for k, v in report.items() if k != "losses"}, "images": batches.images,
              "seconds": round(time.perf_counter() - clock, 3),
              "ranges": "recalibrated on the fine-tuned fp32 graph (effedge's own placement and calibration)"}
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached_report, json.dumps(report).encode())
    atomic_write(cached, graph.SerializeToString())  # last: its presence marks a complete entry
    return cached, {**report, "cached": False}
