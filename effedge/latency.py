"""Latency prediction from the ONNX graph, and latency-targeted compound scaling.

Per layer of the deployed graph: MACs and bytes moved (activations in and out, weights), from ONNX shape
inference. A layer takes ``max(MACs / (peak · e_class), bytes / (bandwidth · e_memory))`` plus a fixed
per-layer overhead (a roofline); op classes: dense conv, pointwise (1×1) conv, depthwise conv, matmul, and
memory-bound ops. The efficiency factors start from priors and are fitted to measured benchmarks (a global
compute scale, a memory scale and the overhead), and measured points override predictions.

Candidates' graphs come from exports at the two smallest valid inputs (the largest stride and twice it):
input sizes are multiples of the largest stride, so each layer's cost is a + b·(input area) — feature-map
layers proportional, pooled squeeze-excite layers constant — and two sizes give it exactly.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from effedge.profiles import Profile
from effedge.scaling import EFFICIENTDETS, EfficientDetSpec, ModelSpec, resolve

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1, "mixed": 1}
PRIORS = {"conv": 1.0, "pointwise": 0.8, "depthwise": 0.15, "matmul": 1.0}
DEFAULT_MODEL = {"compute_scale": 0.3, "memory_scale": 0.5, "overhead_us": 15.0}
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


def candidate_costs(spec: ModelSpec, precision: str, cache_dir=None) -> list[LayerCost]:
    """Costs of ``spec`` at its input size, from cached exports at the two smallest valid inputs."""
    import tempfile

    import onnx
    import torch

    from effedge.export import _deployable, _torch_export, example_input, output_names
    from effedge.models import build_model
    from effedge.precision import cache_root
    from effedge.simplify import simplify_model

    stride = spec.largest_stride if isinstance(spec, EfficientDetSpec) else 32
    sizes = (stride, 2 * stride)
    key = hashlib.sha256(json.dumps([spec.name, spec.phi, sizes, precision, 2]).encode()).hexdigest()[:24]
    path = (cache_dir or cache_root() / "costs") / f"{spec.name}-{key}.json"
    if path.is_file():
        pair = [[LayerCost(*row) for row in rows] for rows in json.loads(path.read_text())]
    else:
        pair = []
        for size in sizes:
            wrapper = _deployable(build_model(spec, image_size=size), "float")
            with tempfile.TemporaryDirectory() as tmp:
                target = f"{tmp}/small.onnx"
                _torch_export(wrapper, torch.from_numpy(example_input((size, size), 1, "float")), target,
                              output_names(isinstance(spec, EfficientDetSpec)), 17, None)
                pair.append(graph_costs(simplify_model(onnx.load(target)), precision))
        if len(pair[0]) != len(pair[1]):
            raise RuntimeError(f"{spec.name}: graphs at {sizes} differ in structure; cannot extrapolate costs")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([[[c.op_class, c.macs, c.activation_bytes, c.weight_bytes] for c in costs]
                                    for costs in pair]))
    return extrapolated(pair[0], pair[1], sizes[0] ** 2, sizes[1] ** 2, spec.resolution ** 2)


def predict_ms(costs: list[LayerCost], profile: Profile, precision: str, model: Optional[dict] = None,
               batch: int = 1) -> float:
    params = {**DEFAULT_MODEL, **(model or profile.efficiency)}
    peak = profile.device.peak_ops(precision) * params["compute_scale"]
    bandwidth = profile.device.memory_bandwidth_gbs * 1e9 * params["memory_scale"]
    total = 0.0
    for cost in costs:
        memory = (cost.activation_bytes * batch + cost.weight_bytes) / bandwidth
        compute = cost.macs * batch / (peak * PRIORS[cost.op_class]) if cost.op_class in PRIORS else 0.0
        total += max(compute, memory)
    return (total + len(costs) * params["overhead_us"] * 1e-6) * 1e3


def fit(points: list[tuple[list[LayerCost], float]], profile: Profile, precision: str, batch: int = 1) -> dict:
    """Fit compute scale, memory scale and per-layer overhead to measured (costs, ms) points (least squares on
    log latency). With fewer points than parameters only the compute scale is fitted."""
    from scipy.optimize import least_squares

    measured = np.array([ms for _, ms in points])

    def model_of(theta) -> dict:
        if len(theta) == 1:
            return {**DEFAULT_MODEL, "compute_scale": float(np.exp(theta[0]))}
        return {"compute_scale": float(np.exp(theta[0])), "memory_scale": float(np.exp(theta[1])),
                "overhead_us": float(np.exp(theta[2]))}

    def residuals(theta):
        predicted = np.array([predict_ms(costs, profile, precision, model_of(theta), batch) for costs, _ in points])
        return np.log(predicted) - np.log(measured)

    start = np.log([DEFAULT_MODEL["compute_scale"], DEFAULT_MODEL["memory_scale"], DEFAULT_MODEL["overhead_us"]])
    theta0 = start if len(points) >= 3 else start[:1]
    result = least_squares(residuals, theta0, bounds=(np.log(1e-4), np.log(1e4)))
    fitted = model_of(result.x)
    fitted["fit_rms_log_error"] = float(np.sqrt(np.mean(result.fun ** 2)))
    fitted["fitted_on"] = len(points)
    return fitted


@dataclass
class Candidate:
    name: str
    phi: float
    resolution: int
    macs: float
    predicted_ms: float
    source: str  # "predicted" or "measured"
    fits: bool = False


def candidate_specs(step: float = 0.5) -> list[ModelSpec]:
    """Named EfficientDets and custom φ on a grid, ordered by MACs."""
    specs = list(EFFICIENTDETS.values()) + [resolve(float(phi)) for phi in np.arange(0.0, 7.0 + 1e-9, step)
                                            if float(phi) != int(phi)]
    return specs


def select(profile: Profile, *, latency_ms: Optional[float] = None, precision: Optional[str] = None,
           step: float = 0.5, log=lambda message: None) -> tuple[list[Candidate], Optional[Candidate]]:
    """Rank candidates by predicted latency at the profile's percentile; pick the largest (most MACs) that
    fits ``(1 − margin) × budget``. Measured points in the profile override predictions."""
    budget = latency_ms or profile.target.latency_ms
    precision = precision or profile.target.precision
    limit = budget * (1 - profile.target.margin)
    measured = {(m["variant"], m["precision"], m.get("batch", 1)): m["latency_ms"] for m in profile.measured}
    candidates = []
    specs = candidate_specs(step)
    for index, spec in enumerate(specs):
        log(f"costing {spec.name} ({index + 1}/{len(specs)})")
        costs = candidate_costs(spec, precision)
        macs = sum(c.macs for c in costs)
        key = (spec.name, precision, profile.target.batch)
        if key in measured:
            ms, source = measured[key], "measured"
        else:
            ms, source = predict_ms(costs, profile, precision, batch=profile.target.batch), "predicted"
        candidates.append(Candidate(spec.name, spec.phi, spec.resolution, macs, ms, source, ms <= limit))
    candidates.sort(key=lambda c: c.macs)
    fitting = [c for c in candidates if c.fits]
    return candidates, (fitting[-1] if fitting else None)


def _result_costs(result: dict, precision: str) -> tuple[list[LayerCost], int]:
    """Graph costs of a benchmarked model (its ONNX file, or the precision graph next to an engine)."""
    from pathlib import Path

    import onnx

    target = Path(result["target"])
    onnx_path = target if target.suffix == ".onnx" else target.with_suffix(".onnx")
    if not onnx_path.is_file():
        from effedge.errors import EffedgeError

        raise EffedgeError(f"{onnx_path} not found: fitting needs the ONNX graph of each benchmarked model")
    return graph_costs(onnx.load(str(onnx_path)), precision), result.get("batch", 1)


def fit_profile(name: str, result_files: list) -> tuple[dict, list[tuple[str, float, float]]]:
    """Fit a profile to bench results and store efficiency + measured points in the profile file."""
    from effedge.errors import EffedgeError
    from effedge.profiles import load_profile, save_model

    profile = load_profile(name)
    percentile = profile.target.percentile
    results = []
    for path in result_files:
        try:
            data = json.loads(open(path).read())
        except json.JSONDecodeError as exc:
            raise EffedgeError(f"{path} is not JSON ({exc.msg}); pass the output of `effedge bench --json`") from exc
        for result in data if isinstance(data, list) else [data]:
            if not isinstance(result, dict) or not {"backend", "target", "precision", "latency_ms"} <= set(result):
                raise EffedgeError(f"{path} holds no `effedge bench --json` results (backend, target, precision, "
                                   "latency_ms)")
            results.append(result)
    results = [r for r in results if r.get("mode", "inference") == "inference" and r["backend"] != "torch"]
    if not results:
        raise EffedgeError("no inference results to fit (pass `effedge bench --json` outputs)")
    precision = results[0]["precision"]
    points, labels = [], []
    for r in results:
        costs, batch = _result_costs(r, r["precision"])
        points.append((costs, r["latency_ms"][percentile]))
        labels.append(r.get("variant") or r["label"])
    fitted = fit(points, profile, precision, results[0].get("batch", 1))
    errors = [(label, ms, predict_ms(costs, profile, precision, fitted)) for label, (costs, ms) in zip(labels, points)]
    measured = [{"variant": r.get("variant"), "precision": r["precision"], "batch": r.get("batch", 1),
                 "resolution": r.get("resolution"), "latency_ms": r["latency_ms"][percentile]} for r in results]
    save_model(profile, fitted, measured)
    return fitted, errors


def verify_choice(profile: Profile, candidates: list[Candidate], choice: Optional[Candidate], budget: float,
                  precision: str, log=lambda message: None) -> dict:
    """Compile and benchmark the choice; while it misses the budget, step down to the next smaller candidate.
    Also measures the next larger candidate, to show the budget is tight."""
    from effedge import bench
    from effedge.bench_targets import bench_one
    from effedge.pipeline import CompileConfig, compile_model

    def measure(candidate: Candidate) -> float:
        variant = candidate.name if candidate.name[0] == "d" else candidate.phi
        manifest = compile_model(CompileConfig(variant=variant, precision=precision, batch=profile.target.batch,
                                               nms="none", backend=profile.software.backend), log=log)
        out = manifest["compile"]["out_dir"]
        log(f"benchmarking {candidate.name}")
        result = bench_one(__import__("pathlib").Path(out) / manifest["compile"]["deployable"], manifest,
                           manifest["backend"], bench.BenchSettings(batch=profile.target.batch, energy=False))
        return result["latency_ms"][profile.target.percentile]

    ordered = sorted(candidates, key=lambda c: c.macs)
    steps = []
    index = ordered.index(choice) if choice else -1
    verified = None
    while index >= 0:
        ms = measure(ordered[index])
        steps.append({"name": ordered[index].name, "measured_ms": ms, "within_budget": ms <= budget})
        if ms <= budget:
            verified = ordered[index].name
            break
        index -= 1
    if verified and index + 1 < len(ordered):
        larger = ordered[index + 1]
        ms = measure(larger)
        steps.append({"name": larger.name, "measured_ms": ms, "within_budget": ms <= budget, "next_larger": True})
    return {"choice": verified, "steps": steps}
