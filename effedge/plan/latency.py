"""Latency prediction from the ONNX graph, and latency-targeted compound scaling.

Per layer of the deployed graph: MACs and bytes moved (activations in and out, weights), from ONNX shape
inference. Under the profile's priors a layer takes ``max(MACs / (peak · e_compute · e_class),
bytes / (bandwidth · e_memory))`` plus a fixed per-layer overhead (a roofline); op classes: dense conv,
pointwise (1×1) conv, depthwise conv, matmul, and memory-bound ops. The prediction is the sum of three terms
(compute-bound time, memory-bound time, overhead), each weighted by a fit to measured benchmarks: linear
in its weights, so the fit is a non-negative least-squares problem with no local minima, using as few
weights as come within 5 % of the measured points (one point: one scale factor). Per-point corrections
(measured ÷ weighted roofline) then make the fit reproduce every point it was fitted on; between points they
are interpolated along the prior time, beyond them the nearest one holds. Measured points override
predictions. A fit and a measured point count only for the NMS tail they were measured with (the profile's:
:attr:`Profile.nms`), a measured point only for its variant, input size, batch and precision. An unfitted local-CPU profile calibrates itself by timing D0 and D1
(:mod:`effedge.pipeline.measure`, which compiles and benchmarks: planning itself runs no stage).

A detector candidate's layers come from its architecture (:func:`effedge.arch.complexity.analytic_layers`:
the layers of its simplified export, counted as :func:`graph_costs` counts them; milliseconds for every
candidate). The export's costing stays (:func:`exported_costs`, also for classifiers): exports at two small
valid inputs (a detector's largest stride and twice it; 64 and 128 px for a classifier): input sizes are
multiples of the largest stride, so
each layer's cost is a + b·(input area) — feature-map layers proportional, pooled squeeze-excite layers
constant — and two sizes give it exactly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from effedge.errors import EffedgeError, VariantError
from effedge.plan.profiles import ComputeEfficiency, Correction, Fit, Priors, Profile
from effedge.arch.accuracy import accuracy_of
from effedge.arch.scaling import EFFICIENTDET_LITES, EFFICIENTDETS, EfficientDetSpec, ModelSpec, resolve

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1, "mixed": 1}
PRIORS = {"conv": 1.0, "pointwise": 0.8, "depthwise": 0.15, "matmul": 1.0}
_IGNORED = {"Shape", "Constant", "QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Unsqueeze", "Squeeze"}


@dataclass(frozen=True)
class LayerCost:
    op_class: str
    macs: float
    activation_bytes: float
    weight_bytes: float


def _numel(shape) -> float:
    return float(np.prod([d for d in shape if isinstance(d, int) and d > 0])) if shape else 1.0


def graph_costs(model, precision: str) -> list[LayerCost]:
    """Per-node costs of an ONNX model (static shapes; a dynamic batch counts as 1)."""
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
    initializers = {i.name: numpy_helper.to_array(i).shape for i in inferred.graph.initializer}
    element = ELEMENT_BYTES[precision]
    costs = []
    for node in inferred.graph.node:
        if node.op_type in _IGNORED:
            continue
        inputs = [name for name in node.input if name]
        activations = sum(_numel(shapes.get(n, ())) for n in inputs if n not in initializers)
        activations += sum(_numel(shapes.get(n, ())) for n in node.output)
        weights = sum(_numel(initializers[n]) for n in inputs if n in initializers)
        macs, op_class = 0.0, "memory"
        if node.op_type == "Conv" and len(inputs) > 1:
            kernel = initializers.get(inputs[1]) or shapes.get(inputs[1], ())
            out = shapes.get(node.output[0], ())
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            if kernel and out:
                macs = _numel(out) * _numel(kernel[1:])
                in_channels = kernel[1] * groups
                op_class = ("depthwise" if groups > 1 and groups == in_channels else
                            "pointwise" if _numel(kernel[2:]) == 1 else "conv")
        elif node.op_type in ("Gemm", "MatMul") and len(inputs) > 1:
            weight = initializers.get(inputs[1]) or shapes.get(inputs[1], ())
            out = shapes.get(node.output[0], ())
            if weight and out:
                macs = _numel(out) * weight[0 if node.op_type == "MatMul" else -1]
                op_class = "matmul"
        costs.append(LayerCost(op_class, macs, activations * element, weights * element))
    return costs


def extrapolated(small: list[LayerCost], large: list[LayerCost], small_area: float, large_area: float,
                 area: float) -> list[LayerCost]:
    """Per-layer costs at ``area`` from the same graph at two sizes: each cost is a + b·area (pooled
    squeeze-excite layers and weights are constant, feature-map layers proportional), so this is exact."""
    def at(x_small: float, x_large: float) -> float:
        slope = (x_large - x_small) / (large_area - small_area)
        return x_small + slope * (area - small_area)

    return [LayerCost(a.op_class, at(a.macs, b.macs), at(a.activation_bytes, b.activation_bytes), a.weight_bytes)
            for a, b in zip(small, large)]


def candidate_costs(spec: ModelSpec, precision: str) -> list[LayerCost]:
    """Per-layer costs of ``spec`` at its input size: a detector's from its architecture (no export), a
    classifier's from its export (:func:`exported_costs`)."""
    if not isinstance(spec, EfficientDetSpec):
        return exported_costs(spec, precision)
    from effedge.arch.complexity import analytic_layers

    element = ELEMENT_BYTES[precision]
    return [LayerCost(layer.op_class, float(layer.macs), float(layer.activations * element),
                      float(layer.weights * element)) for layer in analytic_layers(spec, spec.resolution)]


def exported_costs(spec: ModelSpec, precision: str, cache_dir=None) -> list[LayerCost]:
    """Costs of ``spec``'s simplified export at its input size, from cached exports at the two smallest valid
    inputs."""
    import tempfile

    import onnx
    import torch

    from effedge.export.onnx_export import deployable, example_input, output_names, torch_export
    from effedge.models import build_model
    from effedge.cache import mark_used
    from effedge.io import cache_root
    from effedge.export.simplify import simplify_model

    # A classifier at twice and four times its stride: at its stride the last map is 1×1 and the export drops the
    # global pool for a Squeeze, so the two graphs would differ in structure.
    sizes = (spec.largest_stride, 2 * spec.largest_stride) if isinstance(spec, EfficientDetSpec) else (64, 128)
    key = hashlib.sha256(json.dumps([spec.name, spec.phi, sizes, precision, 2]).encode()).hexdigest()[:24]
    path = (cache_dir or cache_root() / "costs") / f"{spec.name}-{key}.json"
    if path.is_file():
        pair = [[LayerCost(*row) for row in rows] for rows in json.loads(path.read_text())]
        mark_used(path)
    else:
        pair = []
        for size in sizes:
            wrapper = deployable(build_model(spec, image_size=size), "float")
            with tempfile.TemporaryDirectory() as tmp:
                target = f"{tmp}/small.onnx"
                torch_export(wrapper, torch.from_numpy(example_input((size, size), 1, "float")), target,
                              output_names(isinstance(spec, EfficientDetSpec)), 17, None)
                pair.append(graph_costs(simplify_model(onnx.load(target)), precision))
        if len(pair[0]) != len(pair[1]):
            raise RuntimeError(f"{spec.name}: graphs at {sizes} differ in structure; cannot extrapolate costs")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([[[c.op_class, c.macs, c.activation_bytes, c.weight_bytes] for c in costs]
                                    for costs in pair]))
    return extrapolated(pair[0], pair[1], sizes[0] ** 2, sizes[1] ** 2, spec.resolution ** 2)


GENERIC_PRIORS = Priors(compute=ComputeEfficiency(fp32=0.3, fp16=0.3, int8=0.3), memory=0.5, overhead_us=15.0,
                        source="generic guess (the profile carries no priors)")
TERMS = ("compute", "memory", "overhead")
CALIBRATION_VARIANTS = ("d0", "d1")  # what an unfitted local-CPU profile times to calibrate itself
FIT_TOLERANCE = 0.05  # a fit must reproduce every point it was fitted on to within this relative error
# Which terms share one weight, from the fewest parameters up: one scale; work vs overhead (and the other
# two pairings); each term its own weight.
_GROUPINGS = (
    (((0, 1, 2),),),
    (((0, 1), (2,)), ((0,), (1, 2)), ((0, 2), (1,))),
    (((0,), (1,), (2,)),),
)


def latency_terms(costs: list[LayerCost], profile: Profile, precision: str, batch: int = 1) -> np.ndarray:
    """The prior roofline split into (compute-bound ms, memory-bound ms, overhead ms): each layer takes
    ``max(MACs / (peak · e_compute · e_class), bytes / (bandwidth · e_memory))`` and adds to the term that
    bounds it; every layer adds ``overhead_us``."""
    priors = profile.priors or GENERIC_PRIORS
    peak = profile.device.peak_ops(precision) * priors.compute_for(precision)
    bandwidth = profile.device.memory_bandwidth_gbs * 1e9 * priors.memory
    compute_s = memory_s = 0.0
    for cost in costs:
        memory = (cost.activation_bytes * batch + cost.weight_bytes) / bandwidth
        compute = cost.macs * batch / (peak * PRIORS[cost.op_class]) if cost.op_class in PRIORS else 0.0
        if compute >= memory:
            compute_s += compute
        else:
            memory_s += memory
    return np.array([compute_s * 1e3, memory_s * 1e3, len(costs) * priors.overhead_us * 1e-3])


def _weights(fitted: Optional[Fit]) -> np.ndarray:
    return np.ones(3) if fitted is None else np.array([fitted.compute, fitted.memory, fitted.overhead])


def _correction(fitted: Fit, prior_ms: float) -> float:
    """The fit's correction at a graph whose prior roofline takes ``prior_ms``: log-linear between the fitted
    points' corrections (ordered by their prior time), the nearest one's beyond them."""
    if not fitted.corrections:
        return 1.0
    xs = np.log([c.prior_ms for c in fitted.corrections])
    ys = np.log([c.factor for c in fitted.corrections])
    return float(np.exp(np.interp(np.log(prior_ms), xs, ys)))


def predict_ms(costs: list[LayerCost], profile: Profile, precision: str, fitted: Optional[Fit] = None,
               batch: int = 1) -> float:
    """Predicted latency: the prior roofline's terms, weighted and corrected by the profile's fit for
    ``precision`` at its NMS tail (or ``fitted``); the plain prior roofline where there is none."""
    fitted = fitted if fitted is not None else profile.fit_for(precision)
    terms = latency_terms(costs, profile, precision, batch)
    if fitted is None:
        return float(terms.sum())
    return float(terms @ _weights(fitted)) * _correction(fitted, float(terms.sum()))


def fit_weights(terms: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative weights on the (points × 3) prior terms so that ``terms @ weights`` comes close to
    ``measured``, with as few free weights as get every point within FIT_TOLERANCE (Occam: fewer weights
    extrapolate more safely): one point gets one scale factor (exact), two points at most two weights,
    three and more up to three. Least squares on relative error. Returns (weights, largest relative error)."""
    from scipy.optimize import nnls

    terms, measured = np.asarray(terms, float), np.asarray(measured, float)
    relative = terms / measured[:, None]
    best: Optional[tuple[float, np.ndarray]] = None
    for groupings in _GROUPINGS[:min(len(measured), 3)]:
        for grouping in groupings:
            columns = np.stack([relative[:, list(group)].sum(axis=1) for group in grouping], axis=1)
            solved, _ = nnls(columns, np.ones(len(measured)))
            weights = np.zeros(3)
            for group, weight in zip(grouping, solved):
                weights[list(group)] = weight
            error = float(np.max(np.abs(relative @ weights - 1)))
            if best is None or error < best[0] - 1e-12:
                best = (error, weights)
        if best[0] <= FIT_TOLERANCE:
            break
    return best[1], best[0]


def fit_terms(terms: np.ndarray, measured: np.ndarray, labels: list[str], method: str = "fit",
              nms: Optional[str] = None) -> Fit:
    """A Fit to measured points given their prior terms (points × 3): the weights of ``fit_weights``, then
    per point the correction measured ÷ weighted roofline, so that the fit reproduces every point it was
    fitted on (points at the same prior time share their mean correction)."""
    terms, measured = np.asarray(terms, float), np.asarray(measured, float)
    weights, shape_error = fit_weights(terms, measured)
    by_prior: dict[float, list[float]] = {}
    for row, ms in zip(terms, measured):
        by_prior.setdefault(round(float(row.sum()), 9), []).append(np.log(ms / float(row @ weights)))
    corrections = [Correction(prior_ms=prior, factor=float(np.exp(np.mean(logs))))
                   for prior, logs in sorted(by_prior.items())]
    return Fit(compute=float(weights[0]), memory=float(weights[1]), overhead=float(weights[2]),
               corrections=corrections, method=method, points=labels, shape_error=shape_error, nms=nms)


def fit(points: list[tuple[list[LayerCost], float]], profile: Profile, precision: str, batch: int = 1,
        labels: Optional[list[str]] = None, method: str = "fit") -> Fit:
    """Fit ``profile``'s prior roofline to (costs, ms) points measured with its NMS tail; see fit_terms."""
    terms = np.stack([latency_terms(costs, profile, precision, batch) for costs, _ in points])
    return fit_terms(terms, np.array([ms for _, ms in points]),
                     labels or [f"point {i + 1}" for i in range(len(points))], method, profile.nms)


@dataclass
class Candidate:
    name: str
    phi: float
    resolution: int
    macs: float
    predicted_ms: float
    source: str  # "predicted" or "measured"
    fits: bool = False
    family: str = "d"  # "d" (EfficientDet and custom φ) or "lite" (EfficientDet-Lite)
    accuracy: Optional[float] = None  # COCO AP; accuracy_basis says which table (or interpolation)
    accuracy_source: Optional[str] = None  # "published" or "interpolated"
    accuracy_basis: Optional[str] = None


FAMILIES = ("d", "lite", "all")


def candidate_specs(step: float = 0.5, family: str = "all") -> list[ModelSpec]:
    """The detectors ``select`` weighs: family "d" (named EfficientDets and custom φ on a grid of ``step``),
    "lite" (the EfficientDet-Lites), or "all"."""
    if family not in FAMILIES:
        raise VariantError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    specs: list[ModelSpec] = []
    if family in ("d", "all"):
        specs += list(EFFICIENTDETS.values()) + [resolve(float(phi)) for phi in np.arange(0.0, 7.0 + 1e-9, step)
                                                 if float(phi) != int(phi)]
    if family in ("lite", "all"):
        specs += list(EFFICIENTDET_LITES.values())
    return specs


def select(profile: Profile, *, latency_ms: Optional[float] = None, precision: Optional[str] = None,
           step: float = 0.5, image_size: Optional[int] = None, family: str = "all",
           log=lambda message: None) -> tuple[list[Candidate], Optional[Candidate]]:
    """Rank candidates of ``family`` (:func:`candidate_specs`) by predicted latency at the profile's percentile;
    pick the most accurate (published COCO AP, or interpolated on φ for a custom one; ties: the faster) that fits
    ``(1 − margin) × budget``. Within family "d" that is the largest that fits, as accuracy grows with φ. Each
    candidate at its own input size, or every one at ``image_size`` (candidates whose size multiple it is not
    a multiple of are left out); then no published figure applies (each was measured at the variant's own size)
    and the candidate with the most MACs that fits is chosen, its accuracy shown with that caveat. A point measured at the candidate's input size, the profile's batch, this
    precision and the profile's NMS tail overrides its prediction. (An unfitted local-CPU profile can first be
    calibrated on this machine: ``effedge.pipeline.measure.calibrated``.)"""
    budget = latency_ms or profile.target.latency_ms
    precision = precision or profile.target.precision
    limit = budget * (1 - profile.target.margin)
    candidates = []
    specs = candidate_specs(step, family)
    if image_size is not None:
        left_out = [s.name for s in specs if image_size % s.size_multiple]
        if len(left_out) == len(specs):
            multiple = min(s.size_multiple for s in specs)
            raise VariantError(f"input size {image_size} is not a multiple of any candidate's size multiple "
                               f"({', '.join(sorted({str(s.size_multiple) for s in specs}))}); use e.g. "
                               f"{max(multiple, image_size // multiple * multiple)}")
        if left_out:
            log(f"left out at {image_size} px (not a multiple of their size multiple): {', '.join(left_out)}")
        specs = [dataclasses.replace(s, image_size=image_size) for s in specs if s.name not in left_out]
    log(f"costing {len(specs)} candidates " + (f"at {image_size} px" if image_size else "at their own input sizes"))
    for spec in specs:
        costs = candidate_costs(spec, precision)
        macs = sum(c.macs for c in costs)
        ms = profile.measured_ms(spec.name, spec.resolution, profile.target.batch, precision)
        if ms is not None:
            source = "measured"
        else:
            ms, source = predict_ms(costs, profile, precision, batch=profile.target.batch), "predicted"
        accuracy = accuracy_of(spec)
        candidates.append(Candidate(spec.name, spec.phi, spec.resolution, macs, ms, source, ms <= limit,
                                    family="lite" if spec.lite else "d",
                                    accuracy=accuracy.value if accuracy else None,
                                    accuracy_source=accuracy.source if accuracy else None,
                                    accuracy_basis=accuracy.basis if accuracy else None))
    candidates.sort(key=lambda c: c.macs)
    fitting = [c for c in candidates if c.fits]
    return candidates, max(fitting, key=lambda c: selection_key(c, image_size), default=None)


def selection_key(candidate: Candidate, image_size: Optional[int] = None) -> tuple[float, float]:
    """What ``select`` maximizes among the candidates that fit: accuracy, then speed; with every candidate at one
    ``image_size``, compute (MACs), then speed, as the published accuracies were measured at other sizes."""
    if image_size is not None:
        return (candidate.macs, -candidate.predicted_ms)
    return (candidate.accuracy if candidate.accuracy is not None else -math.inf, -candidate.predicted_ms)


def fit_command(profile: Profile, precision: str) -> str:
    """The commands that measure this profile's device and fit it."""
    return (f"effedge bench --variants d0,d1,d2 --precisions {precision} --nms {profile.nms} --json > bench.json && "
            f"effedge profile fit {profile.name} bench.json")


def describe_model(profile: Profile, precision: str) -> str:
    """One line: what the predictions for ``precision`` rest on (a fit, a self-calibration, or priors)."""
    fitted = profile.fit_for(precision)
    if fitted is None:
        priors = profile.priors or GENERIC_PRIORS
        other = profile.fits.get(precision)
        why = (f" (its {precision} fit was measured with NMS tail {other.nms or 'unrecorded'}, it deploys "
               f"{profile.nms})" if other is not None else "")
        return (f"{profile.name} is unfitted for {precision}{why}: predictions come from priors ({priors.source}); "
                f"fit it on the device: {fit_command(profile, precision)}")
    how = "self-calibrated on" if fitted.method == "self-calibration" else "fitted to"
    return (f"{profile.name} {precision} (NMS tail {fitted.nms}): {how} {', '.join(fitted.points)} (reproduced; "
            f"the weighted roofline alone is within {fitted.shape_error:.1%} of them)"
            + (f"; a fit on more variants predicts larger ones better: {fit_command(profile, precision)}"
               if len(fitted.points) < 2 else ""))


def needs_calibration(profile: Profile, precision: str) -> bool:
    """A CPU profile run by ONNX Runtime describes this machine, so it can be measured here and now."""
    return (profile.device.kind == "cpu" and profile.software.backend == "onnxruntime"
            and profile.fit_for(precision) is None)


def _resolve_target(target: str, json_dir: Path) -> Path:
    """A bench result's model path: absolute as written, else relative to the JSON file, else to here."""
    path = Path(target)
    for candidate in ([path] if path.is_absolute() else [json_dir / path, Path.cwd() / path]):
        if candidate.exists():
            return candidate
    tried = path if path.is_absolute() else f"{json_dir / path} or {Path.cwd() / path}"
    raise EffedgeError(f"{target} not found (looked at {tried}): fitting needs the ONNX graph of each "
                       "benchmarked model; run `profile fit` where the bench ran, or bench again")


def _result_costs(result: dict, json_dir: Path) -> list[LayerCost]:
    """Graph costs of a benchmarked model (its ONNX file, or the precision graph next to an engine)."""
    import onnx

    target = _resolve_target(result["target"], json_dir)
    onnx_path = target if target.suffix == ".onnx" else target.with_suffix(".onnx")
    if not onnx_path.is_file():
        raise EffedgeError(f"{onnx_path} not found: fitting needs the ONNX graph of each benchmarked model")
    return graph_costs(onnx.load(str(onnx_path)), result["precision"])


def _read_results(result_files: list) -> list[tuple[dict, Path]]:
    results = []
    for path in map(Path, result_files):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EffedgeError(f"{path} is not JSON ({exc.msg}); pass the output of `effedge bench --json`") from exc
        for result in data if isinstance(data, list) else [data]:
            if not isinstance(result, dict) or not {"backend", "target", "precision", "latency_ms"} <= set(result):
                raise EffedgeError(f"{path} holds no `effedge bench --json` results (backend, target, precision, "
                                   "latency_ms)")
            results.append((result, path.resolve().parent))
    results = [(r, d) for r, d in results if r.get("mode", "inference") == "inference" and r["backend"] != "torch"]
    if not results:
        raise EffedgeError("no inference results to fit (pass `effedge bench --json` outputs)")
    return results


def fit_profile(name: str, result_files: list) -> dict:
    """Fit a profile, per precision, to bench results of graphs with the profile's NMS tail (results of another
    tail are left out and listed); write it with the fits and measured points to the user profile directory.
    Returns a JSON-ready report: where it was written, the results left out, and per precision the fit and
    each point's measured and reproduced latency."""
    from effedge.plan.profiles import Measured, load_profile, save_model

    profile = load_profile(name)
    percentile = profile.target.percentile
    results = _read_results(result_files)
    matching = [(r, d) for r, d in results if r.get("nms") == profile.nms]
    if not matching:
        found = ", ".join(sorted({str(r.get("nms", "unrecorded")) for r, _ in results}))
        raise EffedgeError(f"no result was measured with {profile.name}'s NMS tail ({profile.nms}; the results have "
                           f"{found}): bench with --nms {profile.nms}, or set target.nms in the profile to what "
                           "you deploy")
    by_precision: dict[str, list] = {}
    for result, json_dir in matching:
        by_precision.setdefault(result["precision"], []).append(
            (result, _result_costs(result, json_dir), result["latency_ms"][percentile]))
    fits, report = dict(profile.fits), {}
    measured = {(m.variant, tuple(m.resolution or ()), m.batch, m.precision, m.nms): m for m in profile.measured}
    for precision, rows in by_precision.items():
        labels = [r.get("variant") or r["label"] for r, _, _ in rows]
        terms = np.stack([latency_terms(costs, profile, precision, r.get("batch", 1)) for r, costs, _ in rows])
        fitted = fits[precision] = fit_terms(terms, np.array([ms for _, _, ms in rows]), labels, nms=profile.nms)
        report[precision] = {**fitted.model_dump(), "percentile": percentile, "points": [
            {"label": label, "batch": r.get("batch", 1), "measured_ms": ms,
             "predicted_ms": predict_ms(costs, profile, precision, fitted, r.get("batch", 1)),
             "roofline_ms": float(t @ _weights(fitted))} for label, (r, costs, ms), t in zip(labels, rows, terms)]}
        for point in report[precision]["points"]:
            point["error"] = point["predicted_ms"] / point["measured_ms"] - 1
        for r, _, ms in rows:
            point = Measured(variant=r.get("variant"), precision=precision, batch=r.get("batch", 1),
                             resolution=r.get("resolution"), latency_ms=ms, nms=profile.nms)
            measured[(point.variant, tuple(point.resolution or ()), point.batch, precision, point.nms)] = point
    path = save_model(profile, fits, list(measured.values()))
    left_out = [{"label": r["label"], "nms": r.get("nms")} for r, _ in results if r.get("nms") != profile.nms]
    return {"profile": profile.name, "nms": profile.nms, "written_to": str(path), "fits": report,
            "left_out": left_out}
