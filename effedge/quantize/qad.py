"""Quantization-aware distillation (QAD): the step after calibration that needs nothing but the calibration images.

The PyTorch model (rebuilt from the build directory's build.json) is fake-quantized with NVIDIA ModelOpt
(``mtq.quantize``: weights int8 per output channel, activations int8 per tensor), then its weights and biases are
fine-tuned, through ModelOpt's straight-through fake quantization, so that its raw outputs reproduce the fp32
model's own outputs on the same images — no labels. The fine-tuned fp32 weights are what comes out
(:func:`distilled_state_dict`): they go through the normal export path and effedge's own Q/DQ placement
(:func:`fine_tuned_source`, called by the precision stage), so the int8 graph obeys every rule the post-training
one does; fidelity is still measured against the original fp32 model.

Ranges "deployed" (the default) make the student quantize as the deployed graph does: every convolution's input
quantizer holds the post-training graph's range of that tensor (:func:`deployed_input_ranges`), and the tensors
that graph quantizes for other operators — residual sums, squeeze-excite gates, BiFPN fusion and resampling, which
ModelOpt's layer quantizers do not cover — are fake-quantized where torch computes them (:func:`deployed_output_sites`,
found by value, :class:`CallSites`). The QAD graph is then deployed with the same ranges, not recalibrated. With
ModelOpt's own placement and max ranges the student's box regression was 7 dB further from fp32 than the deployed
graph's (shapes fixture), so the fine-tuning corrected errors deployment does not make; matched, they agree within
0.5 dB on every output.

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from effedge.errors import EffedgeError
from effedge.io import atomic_write, cache_root, private_tempdir, read_manifest, sha256_file

DEFAULT_STEPS = 200
DEFAULT_LR = 1e-5
# Bump when the fine-tuning changes its result for the same inputs (which layers are fake-quantized, the loss,
# the schedule): cached graphs of an older version are then not served. 2: effedge's padded Conv2d is quantized.
ALGORITHM_VERSION = 3  # 3: "deployed" ranges
# "deployed": every convolution's input quantizer holds the range of the same tensor in the post-training int8
# graph, and the QAD graph is deployed with those ranges (no recalibration), so the fine-tuning trains under the
# ranges it will run with; "max": ModelOpt's max calibration; "percentile": ModelOpt's histogram calibrator cut at
# TRAINING_PERCENTILE. With "max" and "percentile" the QAD graph is recalibrated after the fine-tuning.
TRAINING_RANGES = ("deployed", "max", "percentile")
DEFAULT_RANGES = "deployed"
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
# {torch module name: {input height × width: amax}}: the deployed range of each call of a convolution (a shared
# head convolution runs once per pyramid level, each level its own tensor and range)
InputRanges = dict[str, dict[tuple[int, int], float]]


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
            input_ranges: Optional[InputRanges] = None, output_sites: Optional[dict] = None,
            progress: Progress = lambda items, total, description: items,
            log: Callable[[str], None] = lambda message: None) -> tuple[object, dict]:
    """Fine-tune a fake-quantized copy of ``module`` (a torch module, left unchanged) to reproduce its outputs on
    ``batches`` (calibration inputs, as the graph takes them; any sequence, read one item at a time, so it may
    prepare each when asked: see :class:`CalibrationBatches`). Ranges "deployed" need ``input_ranges``
    (:func:`deployed_input_ranges`) and may take ``output_sites`` (:func:`deployed_output_sites`; the student then
    fake-quantizes them inside ``student.output_quantization``, a context). Returns (the fake-quantized student,
    report with the loss before and after,
    on up to :data:`LOSS_SAMPLE` batches, and per step). Deterministic for a given seed."""
    import torch

    options.validate()
    if (options.ranges == "deployed") != (input_ranges is not None):
        raise ValueError("QAD ranges 'deployed' need input_ranges (deployed_input_ranges of the post-training "
                         "int8 graph), and only they take them; without a deployed graph use ranges='max'")
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
        pinned, own, unquantized = (pin_input_ranges(student, input_ranges) if input_ranges is not None
                                    else (None, 0, 0))
        student.output_quantization = output_quantization(student, output_sites) if output_sites else None
        recompute_in_backward(student)
        # BatchNorm statistics stay the fp32 model's (eval mode): only weights, biases and ranges move.
        # built models come frozen (inference): train all but the BiFPN fusion weights, which export folds into
        # the convolutions before them (the deployed ranges of those tensors hold for these weights only)
        parameters = [p for name, p in student.named_parameters() if not name.endswith(FROZEN_PARAMETER)]
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(parameters, lr=options.lr)
        order = torch.randperm(len(batches) * ((options.steps + len(batches) - 1) // len(batches))) % len(batches)
        quantizing = student.output_quantization or contextlib.nullcontext()
        with quantizing:  # around backward too: it recomputes blocks
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
        outputs_quantized = len(student.output_quantization.hits) if student.output_quantization else 0
    log(f"distillation loss {initial:.4g} -> {final:.4g} over {options.steps} steps")
    return student, {"steps": options.steps, "lr": options.lr, "seed": options.seed, "ranges": options.ranges,
                     "batches": len(batches),
                     **({} if pinned is None else {"pinned_convolutions": pinned,
                                                   "convolutions_keeping_own_range": own,
                                                   "layers_unquantized_as_deployed": unquantized}),
                     **({} if output_sites is None else {"quantized_tensors_outside_convolutions": outputs_quantized,
                                                         "sites_not_reached": len(output_sites) - outputs_quantized}),
                     "loss_before": initial, "loss_after": final, "losses": losses,
                     "loss": LOSS_DESCRIPTIONS[options.loss]}


def _quantized(mtq, student, forward_loop, ranges: str):
    """``student`` fake-quantized (int8 weights per channel, activations per tensor) with ranges from
    ``forward_loop``: ModelOpt's max calibration, or for "percentile" the input quantizers' histograms cut at
    :data:`TRAINING_PERCENTILE` (weights keep their max)."""
    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    if ranges in ("max", "deployed"):  # "deployed": max first (the weights' ranges), then pin_input_ranges
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


def module_of_node(node_name: str, modules: set[str]) -> Optional[str]:
    """The torch module an exported node belongs to, from the scope path the exporter writes into its name
    ("/model/backbone/blocks.3/blocks.3.1/conv_pw/Conv" is "model.backbone.blocks.3.1.conv_pw"; a module called
    several times gets "_1", "_2", … on its later calls: "/model/box_net/predict/conv_pw_4/Conv"). None where no
    module of ``modules`` matches."""
    path: list[str] = []
    for part in node_name.strip("/").split("/")[:-1]:  # the last part is the operator's own name
        if path and part.startswith(path[-1] + "."):  # a container's child is scoped by its full name
            path[-1] = part
        else:
            path.append(part)
    name = ".".join(path)
    if name in modules:
        return name
    first_call = re.sub(r"_\d+$", "", name)
    return first_call if first_call in modules else None


def deployed_input_ranges(quantized_model, modules: Iterable[str]) -> InputRanges:
    """The input range of every convolution of the int8 ONNX ``quantized_model`` (effedge's post-training graph),
    by torch module (names of ``modules``, the network the graph was exported from) and input height × width.
    Layers the graph leaves unquantized are not listed."""
    import onnx

    from effedge.quantize.qdq import convolution_input_ranges

    graph = onnx.shape_inference.infer_shapes(quantized_model).graph
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in list(graph.value_info) + list(graph.input)}
    modules = set(modules)
    table: InputRanges = {}
    for node, (amax, tensor) in convolution_input_ranges(quantized_model).items():
        module, shape = module_of_node(node, modules), shapes.get(tensor, [])
        if module is None or len(shape) != 4 or not all(shape[2:]):
            raise EffedgeError(f"QAD cannot tell which PyTorch layer (and input size) the int8 graph's {node} "
                               "is: please report it with the model; QADOptions(ranges='max') in the library "
                               "trains without the deployed ranges")
        calls = table.setdefault(module, {})
        calls[(shape[2], shape[3])] = max(amax, calls.get((shape[2], shape[3]), 0.0))
    return table


def _per_call_amax(quantizer, calls: dict[tuple[int, int], float]):
    """A forward hook body that gives ``quantizer`` the range of this call, chosen by the tensor's height × width
    (so recomputation in backward picks the same one)."""
    import torch

    amaxes = {size: torch.full_like(quantizer.amax, amax) for size, amax in calls.items()}

    def use_deployed_range(tensor) -> None:
        quantizer._amax = amaxes[tuple(tensor.shape[-2:])]  # a new tensor, not an in-place write: autograd keeps
        # the one each call used

    return use_deployed_range


def pin_input_ranges(student, input_ranges: InputRanges) -> tuple[int, int, int]:
    """Make each convolution of the fake-quantized ``student`` quantize as the deployed graph does: its input at the
    deployed range of that call, and not at all where the graph leaves it unquantized (ModelOpt quantizes a
    classifier's Linear, the graph does not; a mixed graph's fp16 blocks). A deployed range above what the
    student's own max calibration saw on the same images is not the same tensor — a uint8 or pixels graph's stem
    quantizes its input before the normalization export folds into it — so that layer keeps its own range.
    Returns (pinned, keeping their own range, left unquantized)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    pinned = own = unquantized = 0
    for name, module in student.named_modules():
        quantizer = getattr(module, "input_quantizer", None)
        if not isinstance(quantizer, TensorQuantizer) or not quantizer.is_enabled:
            continue
        calls = input_ranges.get(name)
        if calls is None:
            quantizer.disable()
            module.weight_quantizer.disable()
            unquantized += 1
        elif max(calls.values()) > 1.05 * float(quantizer.amax.max()) + 0.01:
            own += 1
        else:
            use = _per_call_amax(quantizer, calls)
            module.register_forward_pre_hook(lambda module, args, use=use: use(args[0]))
            pinned += 1
    return pinned, own, unquantized


FROZEN_PARAMETER = "edge_weights"
SIGNATURE_GROUP = 16  # tensors read back per fp32 forward while matching them to calls
SIGNATURE_VALUES = 1 << 16  # values of a sample a signature reads at most (D5 signs thousands of calls)


class CallSite(NamedTuple):
    """A torch call, named the same from forward to forward: its n-th call of a function within one call of the
    innermost module, and the shape it returned."""
    module: str
    function: str
    nth: int
    shape: tuple[int, ...]


class CallSites:
    """Names every tensor a torch function returns during a forward of ``network`` by its :class:`CallSite`, and lets
    ``on_call(site, tensor)`` replace it. The names repeat from forward to forward, and in the recomputation of a
    checkpointed block during backward (:func:`recompute_in_backward` frames it), so a tensor of the exported graph
    found once by its values is found at every step. Calls inside ModelOpt's quantizers and outside ``network``'s
    modules (the teacher, the loss) are not named. Use as a context manager around forwards and backwards."""

    def __init__(self, network, on_call: Callable) -> None:
        from modelopt.torch.quantization.nn import TensorQuantizer

        self._names = {id(m): (None if isinstance(m, TensorQuantizer) else name)
                       for name, m in network.named_modules()}
        self._on_call, self._frames, self._handles = on_call, [], []
        self._mode = None

    def push(self, module) -> None:
        self._frames.append((self._names.get(id(module)), {}))

    def pop(self) -> None:
        self._frames.pop()

    def depth(self) -> int:
        return len(self._frames)

    def truncate(self, depth: int) -> None:
        del self._frames[depth:]

    def top(self, module) -> bool:
        return bool(self._frames) and self._frames[-1][0] == self._names.get(id(module), False)

    def naming(self):
        """The torch function mode that names (and hands to ``on_call``) the calls: entered by the context, and
        again by a block recomputed in backward, where the autograd engine runs without the caller's modes."""
        import torch
        from torch.overrides import TorchFunctionMode

        sites = self

        class Naming(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if not sites._frames or sites._frames[-1][0] is None or not isinstance(out, torch.Tensor):
                    return out
                name, counts = sites._frames[-1]
                function = getattr(func, "__name__", repr(func))
                nth = counts.get(function, 0)
                counts[function] = nth + 1
                return sites._on_call(CallSite(name, function, nth, tuple(out.shape)), out)

        return Naming()

    def __enter__(self):
        from torch.nn.modules import module as module_hooks

        # always_call: a recomputation stopped early (torch's checkpoint raises inside a block once it has what
        # backward needs) still pops the frames it pushed
        self._handles = [module_hooks.register_module_forward_pre_hook(lambda m, args: self.push(m)),
                         module_hooks.register_module_forward_hook(lambda m, args, out: self.pop(), always_call=True)]
        self._mode = self.naming()
        self._mode.__enter__()
        _ACTIVE_SITES.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE_SITES.remove(self)
        self._mode.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._frames.clear()


_ACTIVE_SITES: list[CallSites] = []


def deployed_output_sites(quantized_model, fp32_model, module, batch: np.ndarray) -> tuple[dict, int]:
    """{:class:`CallSite`: amax} for the tensors of the int8 ONNX ``quantized_model`` that are quantized for some
    other operator than a convolution (residual sums, squeeze-excite gates, BiFPN fusion and resampling, which
    ModelOpt's layer quantizers do not cover), each found as a torch call of ``module`` (the network
    ``fp32_model`` was exported from) by its values on ``batch``: export renames, fuses and folds, so names alone
    do not tell (a folded BatchNorm's output is its convolution's in the graph, a folded fusion weight scales it).
    Tensors that also feed an operator unquantized are left out; returns (sites, tensors not found)."""
    import onnx
    import torch

    from effedge.quantize.qdq import activation_quantizers, activation_ranges
    from effedge.runtime.onnxruntime import ort_session

    consumers: dict[str, list] = {}
    for node in quantized_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranges = activation_ranges(quantized_model)
    wanted = []
    for tensor, pairs in activation_quantizers(quantized_model).items():
        users = [user for q, dq in pairs for user in consumers.get(dq.output[0], [])]
        direct = [user for user in consumers.get(tensor, []) if user.op_type not in ("QuantizeLinear", "Cast")]
        if any(user.op_type != "Conv" for user in users) and not direct:
            wanted.append(tensor)
    if not wanted:
        return {}, 0
    probe = copy.deepcopy(fp32_model)  # the fp32 graph with the wanted tensors as extra outputs
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in wanted if t not in existing)
    # as calibration runs its graph of many outputs: in the default order they all stay alive to the end (D7)
    session = ort_session(probe, priority_order=True, memory_patterns=False)
    del probe
    input_name = session.get_inputs()[0].name
    signatures: dict[tuple, list] = {}  # shape -> [(tensor, statistics)]
    for start in range(0, len(wanted), SIGNATURE_GROUP):  # a group per forward: D7x's tensors would take GBs
        group = wanted[start:start + SIGNATURE_GROUP]
        for tensor, value in zip(group, session.run(group, {input_name: batch})):
            signatures.setdefault(tuple(value.shape), []).append((tensor, _signature(value)))
    del session
    found: dict[str, tuple[CallSite, float]] = {}

    def match(site, out):
        candidates = [(tensor, expected) for tensor, expected in signatures.get(site.shape, ()) if tensor not in found]
        if candidates:  # one signature a call: at D5 a shape has dozens of candidates, each call's tensor MBs
            ours = _signature(out.detach().numpy())
            for tensor, expected in candidates:
                scale = _scale_between(ours, expected)
                if scale is not None:
                    found[tensor] = (site, scale)  # the first call that makes these values (up to the scale)
                    break
        return out

    with torch.no_grad(), CallSites(module, match):
        module(torch.from_numpy(np.ascontiguousarray(batch)))
    sites: dict = {}
    for tensor, (site, scale) in found.items():  # the graph quantizes scale × the torch tensor
        sites[site] = max(ranges[tensor] / scale, sites.get(site, 0.0))
    return sites, len(wanted) - len(found)


def output_quantization(student, sites: dict) -> CallSites:
    """The context in which ``student``'s forwards fake-quantize each of ``sites`` ({:class:`CallSite`: amax}) with
    its deployed range, through a ModelOpt quantizer configured as the convolutions' input quantizers."""
    import torch
    from modelopt.torch.quantization.nn import TensorQuantizer

    template = next(m.input_quantizer for m in student.modules()
                    if isinstance(getattr(m, "input_quantizer", None), TensorQuantizer)
                    and m.input_quantizer.amax is not None)
    quantizers = {}
    for site, amax in sites.items():
        quantizer = copy.deepcopy(template)  # the template may be a layer's disabled one (kept in high precision)
        quantizer.enable()
        quantizer._amax = torch.full_like(template.amax, amax)
        quantizers[site] = quantizer
    hits: set = set()

    def quantize(site, out):
        quantizer = quantizers.get(site)
        if quantizer is None:
            return out
        out = quantizer(out)
        hits.add(site)
        return out

    context = CallSites(student, quantize)
    context.hits = hits
    return context


def _scale_between(ours: np.ndarray, expected: np.ndarray) -> Optional[float]:
    """k where the graph's tensor is k × ours (k > 0), within what fp32 rounding in another runtime moves (10⁻³ of
    the tensor's root mean square), else None. Export folds constant scales into convolutions (a BiFPN fusion
    weight into the convolution before it), so the graph's tensor may be a scaled copy of the torch one."""
    ours, expected = ours.reshape(4, -1), expected.reshape(4, -1)
    if np.any(ours[2] <= 0) or np.any(expected[2] <= 0):
        return None
    scale = expected[2] / ours[2]  # root mean squares, per sample
    if np.ptp(scale) > 1e-3 * scale.mean():
        return None
    k = float(scale.mean())
    return k if np.all(np.abs(ours * k - expected) <= 1e-3 * expected[2]) else None


def _signature(value: np.ndarray) -> np.ndarray:
    """Statistics that tell tensors of one shape apart and survive fp32 rounding differences: mean, mean absolute
    value, root mean square and a fixed ±1 projection, per sample, over at most :data:`SIGNATURE_VALUES` values
    taken at a fixed stride (the same for every tensor of a shape: matching signs every call of a wanted shape)."""
    flat = value.reshape(value.shape[0], -1)
    flat = flat[:, ::_signature_stride(value.shape)]
    mean = flat.mean(1, dtype=np.float64)
    negated = flat[:, ::3].sum(1, dtype=np.float64) / flat.shape[1]  # the projection: −1 on every third element
    return np.concatenate([mean, np.abs(flat, dtype=np.float64).mean(1),
                           np.sqrt(np.square(flat, dtype=np.float64).mean(1)), mean - 2 * negated])


def _signature_stride(shape: tuple[int, ...]) -> int:
    """The smallest stride that reads at most :data:`SIGNATURE_VALUES` values of a sample and shares no factor with
    its plane (H × W, or the row of a 2-D tensor), so the values read spread over every column and row: a stride
    of 128 on a 128-wide plane would read column 0 alone, the padded border, where two tensors may agree."""
    values, plane = math.prod(shape[1:]), math.prod(shape[2:] if len(shape) > 2 else shape[1:])
    stride = max(1, -(-values // SIGNATURE_VALUES))
    while stride > 1 and math.gcd(stride, plane) != 1:
        stride += 1
    return stride


def recompute_in_backward(network) -> int:
    """Activation checkpointing on every block of ``network`` (:data:`effedge.models.RECOMPUTABLE_BLOCKS`): a
    training step keeps only each block's input and recomputes the block's inner activations during backward
    (the same values: the fake quantization is deterministic). Memory then grows with the number of blocks, not
    with every activation of the network: the difference between a D5 step fitting a workstation or not, for one
    more forward's time per step. Returns the number of blocks."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from effedge.models import RECOMPUTABLE_BLOCKS

    def framed(block, forward, *args):
        # recomputed in backward, the block's forward runs without its module call and outside the caller's torch
        # function modes: name its calls as in forward (the gradient flows through these, fake-quantized alike)
        sites = [s for s in _ACTIVE_SITES if not s.top(block)]
        with contextlib.ExitStack() as naming:
            for site in sites:
                naming.callback(site.truncate, site.depth())  # whatever an early stop left, this frame included
                site.push(block)
                naming.enter_context(site.naming())
            return forward(*args)

    def recomputed(block, forward, *args):
        if torch.is_grad_enabled():
            return checkpoint(functools.partial(framed, block, forward), *args, use_reentrant=False)
        return forward(*args)

    blocks = [m for m in network.modules() if isinstance(m, RECOMPUTABLE_BLOCKS)]
    for block in blocks:
        block.forward = functools.partial(recomputed, block, block.forward)
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


def cache_key(source: Path, images, inputs, options: QADOptions, deployed_ranges: Optional[dict] = None) -> str:
    """What a fine-tuned graph is cached under: everything that changes it (source graph, calibration images,
    settings, the deployed ranges it trains under, input, tool versions and :data:`ALGORITHM_VERSION`)."""
    import hashlib
    import json

    from effedge.provenance import cache_identity

    identity = json.dumps([ALGORITHM_VERSION, sha256_file(source), images.content_hash(), options.steps, options.lr,
                           options.seed, options.ranges, options.loss,
                           sorted(deployed_ranges.items()) if deployed_ranges is not None else None,
                           inputs.format, list(inputs.size), inputs.batch,
                           inputs.preprocessing.describe(),
                           cache_identity("torch", "onnx", "onnxsim", "nvidia-modelopt")])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def fine_tuned_source(source, images, inputs, options: QADOptions, *, deployed_model=None,
                      log: Callable[[str], None], progress: Progress) -> tuple[object, dict]:
    """The fp32 ONNX graph of ``source``'s build with QAD-fine-tuned weights, distilled on the calibration
    images of ``images`` (held-out photos never take part). Ranges "deployed" take ``deployed_model``, the
    post-training int8 graph of ``source`` whose ranges the fine-tuning trains under. Cached by content (source
    graph, images, settings, deployed ranges, tool versions): a re-run does not retrain. Returns (path of the
    cached graph, report)."""
    import json

    from effedge.quantize.qdq import activation_ranges

    options.validate()
    _mtq()
    if (options.ranges == "deployed") != (deployed_model is not None):
        raise ValueError("QAD ranges 'deployed' take the post-training int8 graph, and only they do")
    source = Path(source)
    deployed_ranges = None if deployed_model is None else activation_ranges(deployed_model)
    key = cache_key(source, images, inputs, options, deployed_ranges)
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
    input_ranges, output_sites, unmatched = None, None, 0
    if deployed_model is not None:
        input_ranges = deployed_input_ranges(deployed_model, (name for name, _ in wrapper.named_modules()))
        output_sites, unmatched = deployed_output_sites(deployed_model, onnx.load(str(source)), wrapper, batches[0])
    student, report = distill(wrapper, batches, options, input_ranges=input_ranges, output_sites=output_sites,
                              progress=progress, log=log)
    if deployed_model is not None:
        report["tensors_not_found_in_torch"] = unmatched
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
              "training_ranges": options.ranges,
              "ranges": ("the post-training graph's, trained under and deployed unchanged" if deployed_model is not None
                         else "recalibrated on the fine-tuned fp32 graph (effedge's own placement and calibration)")}
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached_report, json.dumps(report).encode())
    atomic_write(cached, graph.SerializeToString())  # last: its presence marks a complete entry
    return cached, {**report, "cached": False}
