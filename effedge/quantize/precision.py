"""Precision in the graph: FP16, INT8 as explicit symmetric Q/DQ, and mixed INT8/FP16.

* ``fp16`` — ModelOpt AutoCast: fp16 weights and activations, fp32 inputs/outputs.
* ``int8`` — ModelOpt places Q/DQ the way TensorRT fuses (Conv inputs; weights per-channel on axis 0,
  activations per-tensor, zero point 0; layers left unquantized run in fp16). effedge computes the activation
  ranges itself in one streaming ONNX Runtime pass (:mod:`effedge.quantize.calibrators`) and writes them into the
  graph. ModelOpt's placement depends only on the graph and effedge's ranges only on (model, images, method,
  input shape), so both are cached: a re-run with the same inputs neither re-places nor recalibrates.
* ``mixed`` — INT8, then, where its worst raw-output SQNR on held-out images falls short of ``fidelity_target``
  (dB), a sensitivity pass over blocks (:func:`effedge.quantize.qdq.layer_group`: the stem and each backbone
  stage, each BiFPN layer, each detector head; a classifier's head and its Linear): each block is tried in fp16
  alone, then the most sensitive are kept in fp16, in order, until the target is reached.

For TensorRT 8.5/8.6 (ONNX opset ≤ 17) pass ``opset=17``: the non-quantized part then stays fp32 (fp16 Q/DQ
scales need opset 19) and TensorRT's precision flags do the rest. For ONNX Runtime pass ``high_precision="fp32"``:
ONNX Runtime's ``WeightBiasQuantization`` optimizer computes fp16 next to Q/DQ wrongly in a default session
(effedge's own runner disables it; a user's ``InferenceSession(path)`` or Triton does not).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from effedge.cache import mark_used
from effedge.io import atomic_write, cache_root, private_tempdir, sha256_file, write_json
from effedge.quantize.images import DEFAULT_CALIB_DIR, MIN_HOLDOUT_VIEWS, ImageSet, read_ahead
from effedge.quantize.calibrators import ALGORITHM_VERSION, CALIB_METHODS, DEFAULT_METHOD, RangeCollector
from effedge.quantize.fidelity import RANDOM_WEIGHTS_NOTE, nonfinite_warning
from effedge.quantize.qad import QADOptions, fine_tuned_source, refuse as refuse_qad
from effedge.errors import EffedgeError, RunError
from effedge.io import MANIFEST
from effedge.provenance import cache_identity
from effedge.runtime.onnxruntime import ort_session
from effedge.runtime.preprocess import (Preprocessing, graph_input_format, input_layout, is_classifier,
                                        preprocessing_for)
from effedge.provenance.stages import StageMeter

PRECISIONS = ("fp16", "int8", "mixed")
HIGH_PRECISIONS = ("fp16", "fp32")  # the dtype of what int8/mixed graphs do not quantize
SENSITIVITY_IMAGES = 4
# Values per tensor and image kept for the entropy/percentile histograms. At D0 on 2 cores (32 images) 1 << 16 made
# calibration 2.6–3.2× its plain forwards, the histograms alone costing about a forward; 1 << 14, 1.8–2.2×.
CALIBRATION_SAMPLE = 1 << 14

Progress = Callable[[Iterable, int, str], Iterable]


def _no_progress(items: Iterable, total: int, description: str) -> Iterable:
    return items


@dataclass(frozen=True)
class PrecisionOptions:
    precision: str
    calib_dir: Optional[Path] = None  # default: the images shipped in calib/
    calib_images: Optional[int] = 300
    holdout: Optional[int] = None
    holdout_views: int = MIN_HOLDOUT_VIEWS  # fidelity measured on at least this many views of the held-out photos
    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    fidelity_target: float = 20.0  # dB, worst raw-output SQNR (mixed)
    opset: Optional[int] = None  # None: 19 (fp16 Q/DQ scales); ≤ 17 for TensorRT 8.5/8.6
    score_threshold: float = 0.3  # detection agreement
    random_weights: Optional[bool] = None  # None: as the source's build.json says (no detection agreement if so)
    high_precision: Optional[str] = None  # int8/mixed: None is fp16, or fp32 below opset 19; fp32 for ONNX Runtime
    qad: Optional[QADOptions] = None  # int8/mixed: quantization-aware distillation before placement (needs torch)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise EffedgeError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.method not in CALIB_METHODS:
            raise EffedgeError(f"unknown --calib-method {self.method!r}; use one of {', '.join(CALIB_METHODS)}")
        if not 50 < self.percentile <= 100:
            raise EffedgeError(f"--percentile {self.percentile} must be in (50, 100]")
        if self.calib_images is not None and self.calib_images < 1:
            raise EffedgeError(f"--calib-images {self.calib_images}: use at least 1 (500+ recommended)")
        if not math.isfinite(self.fidelity_target):
            raise EffedgeError(f"--fidelity-target {self.fidelity_target} must be a number of dB, e.g. 20")
        if self.opset is not None and not 13 <= self.opset <= 21:
            raise EffedgeError(f"--opset {self.opset} is not supported for Q/DQ graphs; use 13–21")
        if self.high_precision not in (None, *HIGH_PRECISIONS):
            raise EffedgeError(f"unknown --high-precision {self.high_precision!r}; use fp16 or fp32")
        if self.high_precision == "fp16" and self.opset is not None and self.opset < 19:
            raise EffedgeError(f"--high-precision fp16 needs opset 19 (fp16 Q/DQ scales); --opset {self.opset} "
                               "graphs keep fp32")
        if self.qad is not None:
            refuse_qad(self.precision)
            self.qad.validate()

    def high_precision_dtype(self) -> tuple[str, str]:
        """(dtype, why) of the unquantized part of an int8/mixed graph."""
        if self.opset is not None and self.opset < 19:
            return "fp32", f"opset {self.opset} (TensorRT 8.5/8.6): fp16 Q/DQ scales need opset 19"
        if self.high_precision == "fp32":
            return "fp32", ("ONNX Runtime target: its WeightBiasQuantization optimizer computes fp16 next to "
                            "Q/DQ wrongly in a default session")
        return "fp16", ("TensorRT target (strongly typed: the graph's types are the engine's); in ONNX Runtime "
                        "it needs WeightBiasQuantization disabled, as effedge's runner does")


@dataclass(frozen=True)
class ModelInput:
    name: str
    format: str  # effedge.runtime.preprocess.INPUT_FORMATS: "float" (NCHW normalized), "uint8" or "pixels"
    size: tuple[int, int]
    batch: int
    preprocessing: Preprocessing = Preprocessing()  # how images become this input (the model's own)


def model_input(model, manifest: Optional[dict] = None) -> ModelInput:
    """The graph's image input, prepared as its build.json (``manifest``) or its metadata says: a classifier
    (family efficientnet, or one [batch, classes] output) gets the centre crop, a detector the letterbox."""
    from onnx import TensorProto

    graph_input = model.graph.input[0]
    tensor_type = graph_input.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    manifest = manifest or {}
    metadata = {p.key: p.value for p in model.metadata_props}
    # a float input may take raw pixels ("pixels"), which its type cannot tell: build.json or the metadata says
    input_format = graph_input_format(manifest, metadata, uint8=tensor_type.elem_type == TensorProto.UINT8)
    height, width = (dims[1], dims[2]) if input_layout(input_format) == "NHWC" else (dims[2], dims[3])
    if len(model.graph.input) != 1 or len(dims) != 4 or not height or not width:
        raise EffedgeError("the model must have one image input with a static height and width "
                           "(export it with effedge export)")
    classifier = is_classifier(manifest, [len(o.type.tensor_type.shape.dim) for o in model.graph.output])
    preprocessing = preprocessing_for(manifest, metadata, classifier=classifier)
    return ModelInput(graph_input.name, input_format, (height, width), dims[0] or 1, preprocessing)


def _check_source(model, path: Path) -> None:
    ops = {node.op_type for node in model.graph.node}
    if "EfficientNMS_TRT" in ops or "NonMaxSuppression" in ops:
        raise EffedgeError(f"{path.name} has an NMS tail; set the precision before adding NMS "
                           "(export with --nms none; effedge compile does this for you)")
    if "QuantizeLinear" in ops or any(i.data_type == 10 for i in model.graph.initializer):
        raise EffedgeError(f"{path.name} already holds reduced precision; start from the fp32 model.sim.onnx")


# --- ModelOpt: fp16 conversion and Q/DQ placement -------------------------------------------------------

def _modelopt():
    try:
        from modelopt.onnx import logging_config
        from modelopt.onnx.autocast import convert_to_f16
        from modelopt.onnx.autocast import logging_config as autocast_logging
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise EffedgeError(f"NVIDIA ModelOpt is needed for fp16/int8 ({exc}); install the workstation extra: "
                           "pip install -e '.[workstation]'") from exc
    # ModelOpt logs to stdout at INFO (and about NVML on machines without a GPU): keep the CLI's output ours.
    for module in (logging_config, autocast_logging):
        module.configure_logging(level=logging.CRITICAL)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    return convert_to_f16, quantize


_MODELOPT_PATCHES = threading.RLock()  # one thread patches ModelOpt at a time


@contextlib.contextmanager
def _swapped(owner, name: str, replacement):
    """``owner.name`` is ``replacement`` while active (nothing is done where ``owner`` lacks it); yields the
    original. Held under a lock: a second thread entering meanwhile would take the replacement for the original
    and put it back for good."""
    with _MODELOPT_PATCHES:
        original = getattr(owner, name, None)
        if original is None:
            yield None
            return
        setattr(owner, name, replacement)
        try:
            yield original
        finally:
            setattr(owner, name, original)


@contextlib.contextmanager
def linear_dead_end_cleanup():
    """While active, ModelOpt's autocast removes the nodes nobody consumes in one pass over the graph. Its own
    cleanup scans the whole graph once per node output (quadratic: 26 of the 43 s that placing Q/DQ in a 128 px
    D0 took here, and as much of every fp16 conversion). Same rule, same result; the original is restored."""
    try:
        from modelopt.onnx.autocast.precisionconverter import PrecisionConverter
    except ImportError:
        yield
        return

    def cleanup(self) -> None:
        graph = self.model.graph
        needed = {o.name for o in graph.output} | {name for node in graph.node for name in node.input}
        for node in [n for n in graph.node if not any(out in needed for out in n.output)]:
            graph.node.remove(node)

    with _swapped(PrecisionConverter, "_cleanup_no_consumer_nodes", cleanup):  # absent in a ModelOpt: as it is
        yield


@contextlib.contextmanager
def placement_without_calibration():
    """While active, ModelOpt's int8 quantization places Q/DQ without calibrating: the ONNX Runtime calibrator it
    creates (a session on the graph with every activation as an extra output, then a forward pass) is replaced by
    one that only names the tensors, each with the range [-1, 1]. effedge overwrites every activation scale with its
    own calibration, so the pass was pure cost: at D5 most of the placement's minutes and its memory peak. Weight
    scales come from the weights and do not change. The original is restored."""
    try:
        from modelopt.onnx.quantization import ort_patching
        from onnxruntime.quantization import calibrate
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
    except ImportError:
        yield
        return

    class NamesOnly:
        def __init__(self, model_path, op_types_to_calibrate=None, *args, **kwargs):
            import onnx
            from onnx import TensorProto

            model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
            floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
            typed = {v.name: v.type.tensor_type.elem_type
                     for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
            constants = {i.name for i in model.graph.initializer}
            self.tensors = {name for node in model.graph.node for name in [*node.input, *node.output]
                            if typed.get(name) in floats and name not in constants}

        def collect_data(self, data_reader) -> None:
            pass

        def compute_data(self):
            bound = (np.array(-1.0, np.float32), np.array(1.0, np.float32))
            return TensorsData(CalibrationMethod.MinMax, {name: bound for name in self.tensors})

    # ModelOpt installs its factory as ORT's create_calibrator at each quantize: ours goes in its place, and ORT's
    # is put back too. A ModelOpt without the factory calibrates as it does.
    with _swapped(ort_patching, "_create_calibrator_with_extra_options", NamesOnly) as original:
        try:
            yield
        finally:
            if original is not None and calibrate.create_calibrator is NamesOnly:
                calibrate.create_calibrator = original


def to_fp16(model, opset: Optional[int] = None):
    convert_to_f16, _ = _modelopt()
    with linear_dead_end_cleanup():
        return convert_to_f16(model, keep_io_types=True, opset=opset)


def place_qdq(source: Path, model_hash: str, inputs: ModelInput, opset: Optional[int], high_precision: str,
              log) -> tuple[object, bool]:
    """ModelOpt's Q/DQ placement for ``source`` (cached by model hash and target), the unquantized part in
    ``high_precision`` ("fp16" or "fp32"). Returns (model, cached)."""
    import onnx

    identity = json.dumps([model_hash, high_precision, opset, cache_identity("onnx", "nvidia-modelopt")])
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    cached = cache_root() / "placement" / f"{key}.onnx"
    if cached.is_file():
        try:
            model = onnx.load(str(cached))
            mark_used(cached)
            return model, True
        except Exception as exc:  # a truncated or foreign file: recompute it
            log(f"warning: ignoring the unreadable cached Q/DQ placement {cached} ({str(exc).splitlines()[0]})")
    _, quantize = _modelopt()
    log("placing Q/DQ with NVIDIA ModelOpt (once per model; cached)")
    shape = (inputs.batch, *inputs.size, 3) if inputs.format == "uint8" else (inputs.batch, 3, *inputs.size)
    # Placement does not depend on the data; effedge replaces every activation scale afterwards.
    dummy = (np.full(shape, 128, np.uint8) if inputs.format == "uint8" else np.zeros(shape, np.float32))
    with private_tempdir() as tmp:  # ModelOpt's own tmp*.onnx go there too, and go with it
        out, copy_of_source = tmp / "placed.onnx", tmp / "source.onnx"
        shutil.copyfile(source, copy_of_source)  # ModelOpt writes inferred shapes into the file it is given
        with linear_dead_end_cleanup(), placement_without_calibration():
            quantize(str(copy_of_source), quantize_mode="int8", calibration_data={inputs.name: dummy},
                     calibration_method="max", calibration_eps=["cpu"], high_precision_dtype=high_precision,
                     output_path=str(out), log_level="CRITICAL")
        model = onnx.load(str(out))
    if opset is not None and opset < 19:
        model = onnx.version_converter.convert_version(model, opset)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, model.SerializeToString())
    return model, False


# --- calibration -----------------------------------------------------------------------------------------

def calibrate(source_model, tensors: list[str], images: ImageSet, inputs: ModelInput, *, method: str,
              percentile: float, progress: Progress) -> tuple[dict[str, float], int]:
    """Ranges of ``tensors`` over the calibration images, from one streaming pass of the fp32 model.

    The statistics are computed inside the graph, so ONNX Runtime returns small tensors only: for ``max`` each
    tensor's exact max and min (ReduceMax/ReduceMin); for the histogram methods a spatially strided sample of at
    most :data:`CALIBRATION_SAMPLE` values per image, ``x[:, :, ::s, ::s]``, whose values make the histogram and
    its max. The sample is a 1×1 max pool of stride s rather than a Slice: ONNX Runtime runs pools in its
    blocked channel layout, where a Slice makes it convert the whole activation back first (at D0 the Slices
    and conversions took 24 of a 75 ms forward, the pools 9). A static-batch model gets its last batch filled
    up with repeated images (:meth:`ImageSet.padded_batches`): repeats leave the maxima unchanged and are cut
    from the samples, so every image counts once.
    """
    from onnx import TensorProto, helper, shape_inference

    augmented = shape_inference.infer_shapes(copy.deepcopy(source_model))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(augmented.graph.value_info) + list(augmented.graph.input)}
    graph_inputs = {i.name for i in augmented.graph.input}
    need_sample = method != "max"
    fetch: dict[str, tuple[str, str, str | None]] = {}
    statistics: dict[str, list] = {}  # tensor: the nodes that reduce it
    for index, name in enumerate(t for t in tensors if t not in graph_inputs):
        statistics[name] = []
        top = bottom = sample = None
        if not need_sample:
            top, bottom = f"calib/{index}/max", f"calib/{index}/min"
            statistics[name] = [helper.make_node("ReduceMax", [name], [top], keepdims=0, name=top),
                                helper.make_node("ReduceMin", [name], [bottom], keepdims=0, name=bottom)]
        else:
            sample = name
            shape = shapes.get(name, [])
            if len(shape) == 4 and all(shape[1:]):
                step = max(1, round((shape[1] * shape[2] * shape[3] / CALIBRATION_SAMPLE) ** 0.5))
                if step > 1:  # x[:, :, ::step, ::step], as a 1×1 max pool (see the docstring)
                    sample = f"calib/{index}/sample"
                    statistics[name].append(helper.make_node("MaxPool", [name], [sample], name=sample,
                                                             kernel_shape=[1, 1], strides=[step, step]))
        outputs = [o for o in (top, bottom, sample) if o is not None]
        augmented.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
        fetch[name] = (top, bottom, sample)
    # Each tensor's statistics follow the node that makes it, and the session runs the nodes in that order
    # (priority order): in ONNX Runtime's default order they ran late and kept every calibrated activation alive
    # until they did — D5's calibration peaked at 15.2 GB for a 2.1 GB forward, 3.1 GB in this order.
    nodes = list(augmented.graph.node)
    del augmented.graph.node[:]
    for node in nodes:
        augmented.graph.node.append(node)
        for output in node.output:
            augmented.graph.node.extend(statistics.pop(output, []))
    augmented.graph.node.extend(node for pending in statistics.values() for node in pending)  # made by no node
    session = ort_session(augmented, priority_order=True, memory_patterns=False)
    names = [o for outs in fetch.values() for o in outs if o is not None]
    collectors = {name: RangeCollector() for name in tensors}

    def record(values: dict, batch: np.ndarray, real: int) -> None:
        for name, (top, bottom, sample) in fetch.items():
            if sample is None:
                collectors[name].update(np.zeros(0, np.float32), peak=max(float(values[top]), -float(values[bottom])))
            else:
                collectors[name].update(_real_images(values[sample], real, inputs.batch))
        for name in set(tensors) & graph_inputs:
            collectors[name].update(batch[:real])

    used = 0
    batches = images.padded_batches(images.calibration, inputs.size, inputs.format, inputs.batch,
                                    inputs.preprocessing)
    # Three stages overlap (NumPy and ONNX Runtime release the GIL): the next image is decoded and the last
    # one's histograms are filled while ONNX Runtime runs the current one. One batch's statistics wait at most.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="effedge-calibration-statistics") as statistics_pool:
        pending = None
        for batch, real in progress(read_ahead(batches), -(-len(images.calibration) // inputs.batch), "calibrating"):
            values = dict(zip(names, session.run(names, {inputs.name: batch})))
            if pending is not None:
                pending.result()
            pending = statistics_pool.submit(record, values, batch, real)
            used += real
        if pending is not None:
            pending.result()
    if used == 0:
        raise EffedgeError(f"none of the {len(images.calibration)} calibration files in {images.root} could be read "
                           f"(e.g. {images.skipped[0][0]}: {images.skipped[0][1]}); pass --calib with real images")
    return {name: float(c.threshold(method, percentile)) for name, c in collectors.items()}, used


def read_calibration_cache(path: Path, tensors: list[str], log) -> Optional[dict]:
    """The cached ranges, or None when absent; a corrupt entry is reported and recomputed, never trusted."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
        if set(cached["amax"]) != set(tensors) or not isinstance(cached["images"], int) \
                or not all(isinstance(s, list) for s in cached["skipped"]):
            raise ValueError("its contents do not match the graph")
        mark_used(path)
        return cached
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        log(f"warning: recalibrating: the cached ranges {path} are unusable ({exc})")
        return None


def _real_images(values: np.ndarray, real: int, batch: int) -> np.ndarray:
    """``values`` without the repeated images that fill up a last batch (tensors are batch-major)."""
    return values[:real] if real < batch and values.ndim and values.shape[0] == batch else values


# --- fidelity --------------------------------------------------------------------------------------------

def _reference_outputs(source: Path, images: ImageSet, inputs: ModelInput) -> list[tuple[np.ndarray, int, dict]]:
    """(batch, real images in it, fp32 outputs of the real images) for the held-out views."""
    session = ort_session(source, memory_patterns=False)
    names = [o.name for o in session.get_outputs()]
    return [(batch, real, {name: _real_images(value, real, inputs.batch)
                           for name, value in zip(names, session.run(names, {inputs.name: batch}))})
            for batch, real in images.padded_batches(images.holdout_views(), inputs.size, inputs.format,
                                                     inputs.batch, inputs.preprocessing)]


def _source_manifest(source: Path) -> dict:
    """The build.json beside ``source``; empty where there is none or it is not one of ours."""
    try:
        manifest = json.loads((source.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _has_random_weights(source: Path, told: Optional[bool]) -> bool:
    """Whether ``source`` was exported without weights: as told, else as its build.json says."""
    if told is not None:
        return told
    return _source_manifest(source).get("weights") == "random"


def measure_fidelity(model, references: list[tuple[np.ndarray, int, dict]], inputs: ModelInput,
                     score_threshold: float, reference_noise: Optional[str] = None) -> dict:
    from effedge.quantize.fidelity import FidelityMeter

    session = ort_session(model, memory_patterns=False)
    names = [o.name for o in session.get_outputs()]
    meter = FidelityMeter(score_threshold=score_threshold, reference_noise=reference_noise)
    for batch, real, reference in references:
        outputs = session.run(names, {inputs.name: batch})
        meter.update(reference, {name: _real_images(value, real, inputs.batch) for name, value in zip(names, outputs)})
    report = meter.report()
    report["images"] = sum(real for _, real, _ in references)
    return report


def block_groups(int8_model) -> dict[str, set[str]]:
    """{block: names of its nodes}. A block goes to fp16 whole: its convolutions and every other node with
    quantized inputs (residual Adds, pooling, resizing), or its activations would still be rounded to int8."""
    from effedge.quantize.qdq import layer_group

    groups: dict[str, set[str]] = {}
    for node in int8_model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and node.name:
            groups.setdefault(layer_group(node.name), set()).add(node.name)
    return groups


def _mixed_search(int8_model, references, inputs: ModelInput, target: float, score_threshold: float,
                  log, progress: Progress, reference_noise: Optional[str] = None) -> tuple[object, list[dict], dict]:
    """(model, per-block sensitivity, the model's fidelity on all the held-out views: the figures reported).
    Where int8 alone meets ``target``, it is the model and no block is ranked (the sensitivity is empty).

    The first views rank the blocks (one measurement per block); the target is checked on every held-out view,
    so a target reported as met is met by the fidelity figures reported."""
    from effedge.quantize.fidelity import finite_or_none, min_sqnr
    from effedge.quantize.qdq import dequantize_nodes

    measured = measure_fidelity(int8_model, references, inputs, score_threshold, reference_noise)
    if min_sqnr(measured) >= target:  # nothing to keep: ranking the blocks costs a measurement each (19 min at D5)
        log(f"mixed precision: int8 meets the target ({min_sqnr(measured):.1f} dB), no block kept out of int8")
        return int8_model, [], measured
    probe = references[:SENSITIVITY_IMAGES]
    base = measured if len(probe) == len(references) else measure_fidelity(int8_model, probe, inputs, score_threshold)
    groups = block_groups(int8_model)

    def with_fp16(names: set[str]):
        candidate = copy.deepcopy(int8_model)
        dequantize_nodes(candidate, names)
        return candidate

    # A group none of whose inputs is quantized (a classifier's Linear: ModelOpt leaves Gemm in high precision)
    # has nothing to keep out of int8: it is neither probed nor reported as kept.
    groups = {group: names for group, names in groups.items()
              if dequantize_nodes(copy.deepcopy(int8_model), names)}

    sensitivity = []
    for group in progress(list(groups), len(groups), "sensitivity"):
        fidelity = min_sqnr(measure_fidelity(with_fp16(groups[group]), probe, inputs, score_threshold))
        gain = 0.0 if fidelity == min_sqnr(base) else fidelity - min_sqnr(base)  # −∞ − −∞ is no gain, not NaN
        sensitivity.append({"group": group, "layers": len(groups[group]), "gain": gain,
                            "sqnr_db_when_fp16": finite_or_none(fidelity), "gain_db": finite_or_none(gain)})
    sensitivity.sort(key=lambda s: -s.pop("gain"))
    kept: set[str] = set()
    chosen = int8_model
    for entry in sensitivity:
        if min_sqnr(measured) >= target:
            break
        kept |= groups[entry["group"]]
        entry["kept_fp16"] = True
        chosen = with_fp16(kept)
        measured = measure_fidelity(chosen, references, inputs, score_threshold, reference_noise)
        log(f"keeping {entry['group']} out of int8")
    return chosen, sensitivity, measured


# --- the stage -------------------------------------------------------------------------------------------

def convert(source: str | Path, out_dir: Optional[str | Path] = None, *, options: PrecisionOptions,
            log: Callable[[str], None] = lambda message: None, progress: Progress = _no_progress) -> dict:
    """Write ``model.<precision>.onnx`` next to ``source`` (or into ``out_dir``) and record it in build.json;
    returns the precision report."""
    import onnx

    options.validate()
    source = Path(source)
    if not source.is_file():
        raise EffedgeError(f"model {source} not found; export one first (effedge export)")
    try:
        model = onnx.load(str(source))
    except Exception as exc:
        raise EffedgeError(f"cannot read {source} as ONNX: {str(exc).splitlines()[0]}") from exc
    if not model.graph.input:
        raise EffedgeError(f"{source} holds no ONNX graph; export it again")
    _check_source(model, source)
    inputs = model_input(model, _source_manifest(source))
    out = Path(out_dir) if out_dir else source.parent
    images = ImageSet.from_folder(options.calib_dir or DEFAULT_CALIB_DIR, count=options.calib_images,
                                  holdout=options.holdout, min_views=options.holdout_views)
    if options.precision != "fp16":
        images.require_readable()  # before the Q/DQ placement and any inference
    model_hash = sha256_file(source)
    meter = StageMeter()
    report: dict = {"precision": options.precision, "source": source.name, "options": _jsonable(asdict(options)),
                    "input": {"format": inputs.format, **inputs.preprocessing.describe()}}
    if inputs.preprocessing.assumed:
        log(f"warning: {source.name}: {inputs.preprocessing.source}")

    reference_noise = RANDOM_WEIGHTS_NOTE if _has_random_weights(source, options.random_weights) else None
    measured = None  # the fidelity of the graph written, on every held-out view
    graph_source = source  # what Q/DQ is placed on and calibrated: the fp32 graph, or its QAD fine-tuned weights
    deployed_ranges = None  # QAD ranges "deployed": the post-training graph's, which the fine-tuning trains under
    if options.qad is not None:
        with meter.stage("ptq"), private_tempdir() as tmp:  # the post-training graph, for the side-by-side
            ptq = convert(source, tmp, options=replace(options, qad=None), log=log, progress=progress)
            ptq_model = onnx.load(str(tmp / ptq["file"])) if options.qad.ranges == "deployed" else None
        report["ptq_fidelity"] = ptq["fidelity"]
        with meter.stage("qad"):
            graph_source, report["qad"] = fine_tuned_source(source, images, inputs, options.qad,
                                                            deployed_model=ptq_model, log=log, progress=progress)
            model, model_hash = onnx.load(str(graph_source)), sha256_file(graph_source)
        if ptq_model is not None:
            from effedge.quantize.qdq import activation_ranges

            deployed_ranges = activation_ranges(ptq_model)
            del ptq_model

    if options.precision == "fp16":
        log("converting to fp16")
        with meter.stage("convert"):
            result = to_fp16(model, options.opset)
        with meter.stage("reference"):
            references = _reference_outputs(source, images, inputs)
    else:
        from effedge.quantize import qdq

        high_precision, high_precision_reason = options.high_precision_dtype()
        with meter.stage("placement"):
            placed, placement_cached = place_qdq(graph_source, model_hash, inputs, options.opset, high_precision,
                                                 log)
        report["high_precision"] = {"dtype": high_precision, "reason": high_precision_reason}
        with meter.stage("calibration"):
            tensors = sorted(qdq.activation_quantizers(placed))
            # QAD "deployed": the post-training ranges, unchanged (the fine-tuning trained under them); only tensors
            # the post-training graph does not quantize (a mixed graph's fp16 blocks) are calibrated here
            inherited = {t: deployed_ranges[t] for t in tensors if t in deployed_ranges} if deployed_ranges else {}
            tensors = [t for t in tensors if t not in inherited]
            if inherited:
                log(f"QAD: {len(inherited)} activation ranges of the post-training graph, as the fine-tuning used them")
            key_text = json.dumps([ALGORITHM_VERSION, model_hash, images.content_hash(), options.method, options.percentile,
                                   inputs.format, list(inputs.size), inputs.batch, tensors,
                                   inputs.preprocessing.describe(),
                                   cache_identity("onnx", "onnxruntime")])
            cache_file = cache_root() / "calibration" / f"{hashlib.sha256(key_text.encode()).hexdigest()[:32]}.json"
            everything_inherited = bool(inherited) and not tensors
            cached = None if everything_inherited else read_calibration_cache(cache_file, tensors, log)
            if everything_inherited:
                amax, used, calibration_cached = {}, ptq["calibration"]["images"], False
            elif cached is not None:
                amax, used, calibration_cached = cached["amax"], cached["images"], True
                images.skipped = [tuple(s) for s in cached["skipped"]]
                log(f"calibration: cache hit ({used} images, {options.method}), not recalibrating")
            else:
                log(f"calibrating on {len(images.calibration)} images ({options.method})")
                amax, used = calibrate(model, tensors, images, inputs, method=options.method,
                                       percentile=options.percentile, progress=progress)
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                write_json(cache_file, {"amax": amax, "images": used, "skipped": images.skipped})
                calibration_cached = False
            amax = {**inherited, **amax}
        qdq.set_activation_ranges(placed, amax)
        floored = qdq.repair_scales(placed)  # ModelOpt's weight scales: 0 for an all-zero output channel
        result = placed
        report["calibration"] = {
            "method": options.method, "images": used, "skipped": len(images.skipped),
            "skipped_examples": images.skipped[:5], "image_set_sha256": images.content_hash(),
            "folder": str(images.root), "placement_cached": placement_cached, "cached": calibration_cached,
            "tensors": len(amax), **({"ranges_from_post_training": len(inherited)} if inherited else {}),
        }
        for note in images.warnings(used):
            log(f"warning: {note}")
        # fp32's held-out outputs only now: at D7 they take 2.6 GB, which calibration need not share memory with
        with meter.stage("reference"):
            references = _reference_outputs(source, images, inputs)
        if options.precision == "mixed" and deployed_ranges is not None:
            # QAD trained with the post-training search's blocks in fp16 (and the rest at its ranges): keep those
            groups = block_groups(placed)
            kept = [group for group in ptq["kept_fp16"] if group in groups]
            qdq.dequantize_nodes(placed, set().union(*(groups[group] for group in kept)))
            log(f"mixed precision: keeping the post-training search's blocks out of int8 ({', '.join(kept) or 'none'})")
            result, report["sensitivity"], report["kept_fp16"] = placed, ptq["sensitivity"], kept
            with meter.stage("fidelity"):
                measured = measure_fidelity(result, references, inputs, options.score_threshold, reference_noise)
        elif options.precision == "mixed":
            log(f"mixed precision: target {options.fidelity_target} dB; where int8 falls short, the blocks are ranked "
                "and the most sensitive kept out of int8")
            with meter.stage("sensitivity"):
                result, sensitivity, measured = _mixed_search(placed, references, inputs, options.fidelity_target,
                                                              options.score_threshold, log, progress, reference_noise)
            report["sensitivity"] = sensitivity
            report["kept_fp16"] = [s["group"] for s in sensitivity if s.get("kept_fp16")]
        if options.precision == "mixed":
            from effedge.quantize.fidelity import min_sqnr

            reached = min_sqnr(measured)
            report["fidelity_target_met"] = bool(reached >= options.fidelity_target)
            if not report["fidelity_target_met"]:
                kept_how = ("with the post-training search's blocks out of int8 (QAD keeps them)"
                            if deployed_ranges is not None else "with every block out of int8")
                report["warnings"] = [f"mixed precision reached {reached:.1f} dB, short of the "
                                      f"{options.fidelity_target} dB target, {kept_how}: use "
                                      "--precision fp32 or a lower --fidelity-target"]
                log(f"warning: {report['warnings'][0]}")
        report["qdq"] = {**qdq.summary(result), "weight_scales_floored": floored}
        still_int8 = {group for group, _ in report["qdq"]["int8_groups"]} & set(report.get("kept_fp16", []))
        if still_int8:  # a post-condition: the blocks reported as kept hold no INT8 convolution
            raise RunError(f"internal error: block(s) {', '.join(sorted(still_int8))} reported as kept in fp16 still "
                           "hold INT8 convolutions; please report this with the model")
        problems = qdq.invalid_scales(result)
        if problems:  # a post-condition: TensorRT's importer would refuse the graph
            raise RunError(f"internal error: {len(problems)} Q/DQ scale(s) are not positive normal numbers "
                               f"({problems[0]}); please report this with the model")

    if measured is None:  # mixed measured its graph on every held-out view already
        with meter.stage("fidelity"):
            measured = measure_fidelity(result, references, inputs, options.score_threshold, reference_noise)
    report["fidelity"] = measured
    broken = nonfinite_warning(report["fidelity"], options.precision)
    if broken:
        report.setdefault("warnings", []).append(broken)
        log(f"warning: {broken}")
    report["holdout_images"] = [str(p.relative_to(images.root)) for p in images.holdout]
    views = images.holdout_views()
    report["holdout"] = {"photos": len(images.holdout), "views": len(views),
                         "views_per_photo": len(views) // len(images.holdout) if images.holdout else 0,
                         "minimum_views": images.min_views}

    name = f"model.{options.precision}.onnx"
    onnx.helper.set_model_props(result, {p.key: p.value for p in model.metadata_props})  # the input it expects
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / name, result.SerializeToString())
    report["file"] = name
    report["sha256"] = sha256_file(out / name)
    report["opset"] = max(o.version for o in result.opset_import if o.domain in ("", "ai.onnx"))
    report["seconds"] = meter.rounded_seconds()
    report["peak_rss_mb"] = meter.peak_rss_mb
    _record(out, report)
    return report


def _jsonable(options: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


def _record(out: Path, report: dict) -> None:
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {"effedge_manifest": 1}
    manifest.setdefault("precisions", {})[report["precision"]] = report
    manifest.setdefault("artifacts", {})[report["file"]] = {"sha256": report["sha256"],
                                                            "bytes": (out / report["file"]).stat().st_size}
    write_json(path, manifest)
