"""``compile``: build → export → simplify → precision → NMS tail → engine, cached by content hash.

The build directory (docs/architecture.md) is keyed by everything that determines its artefacts — variant and φ,
weights (by content), input size and batch, NMS tail, precision and calibration (images by content),
backend and TensorRT version/GPU — so an unchanged re-run is a cache hit that only verifies hashes.
``backend="auto"`` uses TensorRT when it imports and sees a GPU, else ONNX Runtime on the CPU (whose
deployable is the final ONNX graph).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from effedge.cache import mark_used
from effedge.io import atomic_write, sha256_file, write_json
from effedge.quantize.calibrators import DEFAULT_METHOD
from effedge.quantize.images import MIN_HOLDOUT_VIEWS
from effedge.errors import BackendUnavailable, EffedgeError
from effedge.io import MANIFEST, read_manifest
from effedge.provenance import cache_identity
from effedge.provenance.stages import StageMeter, peak_rss_mb
from effedge.arch.scaling import EfficientDetSpec, ModelSpec, resolve

BACKENDS = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime")
ENGINE_BACKENDS = ("tensorrt", "tensorrt-rtx")
COMPILE_PRECISIONS = ("fp32", "fp16", "int8", "mixed")


@dataclass(frozen=True)
class CompileConfig:
    variant: Union[str, float]
    precision: str = "fp16"
    weights: Optional[str] = None
    num_classes: Optional[int] = None
    pad: str = "same"
    image_size: Optional[int] = None
    batch: int = 1
    dynamic_batch: Optional[tuple[int, int, int]] = None
    nms: str = "auto"  # auto: efficientnms on TensorRT, onnx on ONNX Runtime, none on TensorRT-RTX
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100
    input_format: str = "float"
    calib_dir: Optional[str] = None
    calib_images: Optional[int] = 300
    calib_method: str = DEFAULT_METHOD
    percentile: float = 99.99
    holdout: Optional[int] = None
    holdout_views: int = MIN_HOLDOUT_VIEWS  # fewer makes fidelity (and the mixed search) cheaper
    fidelity_target: float = 20.0
    opset: Optional[int] = None  # None: 17 for the export; the precision graph 19, or 17 for TensorRT 8.5/8.6
    backend: str = "auto"
    dla_core: Optional[int] = None
    workspace_mb: Optional[int] = None
    optimization_level: Optional[int] = None
    compute_capabilities: Optional[tuple[str, ...]] = None  # TensorRT-RTX targets ("8.6", …); None: its default
    class_names: Optional[tuple[str, ...]] = None  # recorded in build.json (the demo detector's shapes)
    qad_steps: Optional[int] = None  # int8/mixed: quantization-aware distillation steps; None: no QAD
    qad_lr: float = 1e-5  # effedge.quantize.qad.DEFAULT_LR (tests/test_cache_keys.py checks they agree)


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "tensorrt" | "tensorrt-rtx" | "onnxruntime"
    reason: str
    version: Optional[str] = None  # TensorRT or TensorRT-RTX version
    compute_capability: Optional[str] = None  # the GPU full TensorRT builds on

    @property
    def capabilities(self):
        from effedge.engine import capabilities

        return capabilities(self.name, self.version) if self.version else None


def choose_backend(requested: str) -> BackendChoice:
    from effedge.runtime import cuda
    from effedge.engine import capabilities_of, import_trt

    if requested not in BACKENDS:
        raise EffedgeError(f"unknown --backend {requested!r}; use one of {', '.join(BACKENDS)}")
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", "requested")
    if requested == "tensorrt-rtx":  # builds ahead of time for the targets asked for: no GPU needed here
        caps = capabilities_of(import_trt("tensorrt-rtx"))
        return BackendChoice("tensorrt-rtx", f"requested ({caps.name}, ahead-of-time build)", caps.version)
    try:
        caps = capabilities_of(import_trt("tensorrt"))
    except BackendUnavailable as exc:
        if requested == "tensorrt":
            raise BackendUnavailable(f"{exc}; or use --backend onnxruntime (the CPU) or --backend tensorrt-rtx "
                                     "(ahead of time)") from exc
        return BackendChoice("onnxruntime", "TensorRT is not installed here: using ONNX Runtime on the CPU")
    try:
        capability = cuda.device_info(0).compute_capability
    except BackendUnavailable as exc:  # no CUDA bindings, driver or GPU: the message says which
        if requested == "tensorrt":
            raise EffedgeError(f"{caps.name} is installed but {exc}; engines must be built on the GPU that runs "
                               "them (or use --backend tensorrt-rtx to build ahead of time)") from exc
        return BackendChoice("onnxruntime", f"{exc}: using ONNX Runtime on the CPU")
    return BackendChoice("tensorrt", f"{caps.name} and a GPU are available", caps.version, capability)


def _weights_identity(weights: Optional[str]) -> Optional[str]:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    return f"sha256:{sha256_file(path)}" if path.is_file() else str(weights)


def cache_key(config: CompileConfig, backend: BackendChoice, nms: str, calib_hash: Optional[str],
              spec: Optional[ModelSpec] = None) -> str:
    settings = asdict(config)
    if config.qad_steps is None:  # without QAD its learning rate changes nothing: it must not force a rebuild
        del settings["qad_lr"]
    material = {**settings, "variant": (spec or resolve(config.variant)).name, "nms": nms, "weights":
                _weights_identity(config.weights), "calib_dir": calib_hash, "backend": backend.name,
                "engine_version": backend.version, "compute_capability": backend.compute_capability,
                "tools": cache_identity("torch", "onnx", "onnxsim", "onnxruntime", "nvidia-modelopt")}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def build_folder_name(config: CompileConfig, spec: ModelSpec, backend: str, nms: str, key: str) -> str:
    """``runs/`` folder name: variant, precision, backend, then whatever differs from the variant's defaults
    (input size, batch, NMS tail, uint8 or pixels input, weights), then the key, so folders that differ say how."""
    parts = [spec.name]
    if config.image_size and config.image_size != spec.resolution:
        parts.append(f"{config.image_size}px")
    parts += [config.precision, backend]
    if config.dynamic_batch:
        parts.append(f"b{config.dynamic_batch[0]}to{config.dynamic_batch[2]}")
    elif config.batch != 1:
        parts.append(f"b{config.batch}")
    if nms != resolve_nms("auto", backend, isinstance(spec, EfficientDetSpec)):
        parts.append(f"nms-{nms}")
    if config.input_format != "float":
        parts.append(config.input_format)
    if config.weights:
        parts.append(re.sub(r"[^A-Za-z0-9_.]+", "_", Path(config.weights).stem)[:24])
    return "-".join([*parts, key[:8]])


def _is_complete(out: Path, key: str) -> bool:
    try:
        manifest = read_manifest(out)
    except EffedgeError:
        return False
    if manifest.get("compile", {}).get("key") != key:
        return False
    artefacts = manifest.get("artifacts", {})
    deployable = manifest["compile"].get("deployable")
    if deployable not in artefacts:
        return False
    return all((out / name).is_file() and sha256_file(out / name) == entry["sha256"]
               for name, entry in artefacts.items())


def compile_model(config: CompileConfig, out_dir: Optional[Union[str, Path]] = None, *, force: bool = False,
                  log: Callable[[str], None] = lambda message: None, progress=None) -> dict:
    """Run the whole pipeline; returns the build manifest (with ``compile.cache_hit``)."""
    from effedge.quantize.images import DEFAULT_CALIB_DIR, ImageSet

    if config.precision not in COMPILE_PRECISIONS:
        raise EffedgeError(f"unknown --precision {config.precision!r}; use one of {', '.join(COMPILE_PRECISIONS)}")
    spec = resolve(config.variant)
    calib_hash = None
    if config.qad_steps is not None and config.precision == "fp32":
        raise EffedgeError("--qad fine-tunes an int8 model; --precision fp32 has no int8 (use --precision int8)")
    if config.precision != "fp32":  # fail fast: nothing is exported before the precision inputs are checked
        _precision_options(config, opset=config.opset).validate()
        images = ImageSet.from_folder(config.calib_dir or DEFAULT_CALIB_DIR, count=config.calib_images)
        if config.precision in ("int8", "mixed"):
            images.require_readable()
            calib_hash = images.content_hash()
    is_detector = isinstance(spec, EfficientDetSpec)
    backend = choose_backend(config.backend)
    log(f"backend: {backend.name} ({backend.reason})")
    if config.dla_core is not None and backend.name != "tensorrt":
        raise EffedgeError("--dla needs the TensorRT backend on a Jetson with DLA cores")
    if config.compute_capabilities and backend.name != "tensorrt-rtx":
        raise EffedgeError("--compute-capability chooses TensorRT-RTX's targets; add --backend tensorrt-rtx")
    nms = resolve_nms(config.nms, backend.name, is_detector)
    if nms == "efficientnms" and backend.name == "onnxruntime":
        raise EffedgeError("--nms efficientnms is a TensorRT plugin that ONNX Runtime cannot run; use --nms onnx")
    caps = backend.capabilities
    if caps is not None:
        from effedge.engine import check_nms

        check_nms(caps, nms)  # before the export, not after minutes of work
        if config.opset and caps.max_onnx_opset and config.opset > caps.max_onnx_opset:
            raise EffedgeError(f"--opset {config.opset}: {caps.name} parses ONNX up to opset {caps.max_onnx_opset}")
    key = cache_key(config, backend, nms, calib_hash, spec)
    out = Path(out_dir) if out_dir else Path("runs") / build_folder_name(config, spec, backend.name, nms, key)
    start = time.perf_counter()
    if not force and _is_complete(out, key):
        manifest = read_manifest(out)
        manifest["compile"].update(cache_hit=True, out_dir=str(out))
        mark_used(out)
        log(f"cache hit: reused {out}, up to date ({time.perf_counter() - start:.1f} s; --force rebuilds)")
        return manifest

    created = not out.exists()
    try:
        return _run_stages(config, spec, backend, nms, key, out, log, progress, start)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # never leave a build directory that looks usable
        raise


def resolve_nms(nms: str, backend: str, is_detector: bool) -> str:
    """``auto``: the tail the backend runs — EfficientNMS_TRT on TensorRT, ONNX NonMaxSuppression on ONNX
    Runtime, none on TensorRT-RTX (no plugins, no NMS layer: the Detector runs NMS) and for classifiers."""
    from effedge.export.nms_tail import default_tail

    return nms if nms != "auto" else default_tail(backend, is_detector)


def _precision_options(config: CompileConfig, opset: Optional[int], backend: Optional[str] = None):
    from effedge.quantize.precision import PrecisionOptions
    from effedge.quantize.qad import QADOptions

    # ONNX Runtime computes fp16 next to Q/DQ wrongly in a default session: its graphs keep fp32 there
    high_precision = "fp32" if backend == "onnxruntime" else None
    return PrecisionOptions(precision=config.precision, calib_dir=Path(config.calib_dir) if config.calib_dir else None,
                            calib_images=config.calib_images, holdout=config.holdout, holdout_views=config.holdout_views,
                            method=config.calib_method,
                            percentile=config.percentile, fidelity_target=config.fidelity_target, opset=opset,
                            high_precision=high_precision,
                            qad=None if config.qad_steps is None else QADOptions(config.qad_steps, config.qad_lr))


def _run_stages(config: CompileConfig, spec: ModelSpec, backend: BackendChoice, nms: str, key: str, out: Path, log, progress,
                start: float) -> dict:
    from effedge.export.onnx_export import ExportOptions, export
    from effedge.export.nms_tail import append_nms_tail
    from effedge.quantize.precision import convert

    meter = StageMeter()
    caps = backend.capabilities
    # TensorRT 8.5/8.6 parse up to opset 17: the precision graph then stays at 17 too (fp32 high precision)
    opset = config.opset or (caps.max_onnx_opset if caps and caps.max_onnx_opset and caps.max_onnx_opset < 19
                             else None)

    with meter.stage("export"):
        export(spec, out, weights=config.weights, num_classes=config.num_classes, pad=config.pad,
               class_names=config.class_names,
               options=ExportOptions(image_size=config.image_size, batch=config.batch,
                                     dynamic_batch=config.dynamic_batch, opset=opset or 17,
                                     input_format=config.input_format), log=log)

    precision_file = f"model.{config.precision}.onnx"
    with meter.stage("precision"):
        if config.precision == "fp32":
            shutil.copyfile(out / "model.sim.onnx", out / precision_file)
        else:
            convert(out / "model.sim.onnx", options=_precision_options(config, opset, backend.name), log=log,
                    **({"progress": progress} if progress else {}))

    if nms != "none":
        import onnx

        log(f"appending the {nms} NMS tail")
        model = append_nms_tail(onnx.load(str(out / precision_file)), nms, score_threshold=config.score_threshold,
                                iou_threshold=config.iou_threshold, max_detections=config.max_detections)
        atomic_write(out / precision_file, model.SerializeToString())

    manifest = read_manifest(out)
    artifacts = manifest.setdefault("artifacts", {})
    artifacts[precision_file] = {"sha256": sha256_file(out / precision_file),
                                 "bytes": (out / precision_file).stat().st_size}
    precision_report = manifest.get("precisions", {}).get(config.precision)
    if precision_report is not None and nms != "none":  # the report describes the file as written now
        _describe_tailed(precision_report, out / precision_file, artifacts[precision_file]["sha256"], nms)
    warnings = list(precision_report.get("warnings", [])) if precision_report else []
    deployable = precision_file
    if backend.name in ENGINE_BACKENDS:
        from effedge.engine import BuildOptions, GraphInfo, build_engine
        from effedge.io import cache_root

        engine_file = f"model.{config.precision}.engine"
        graph = GraphInfo.from_onnx(out / precision_file)
        timing_cache = None
        if caps.timing_cache:
            timing_cache = cache_root() / "tensorrt" / f"{backend.version}-sm{backend.compute_capability}.timing.cache"
            timing_cache.parent.mkdir(parents=True, exist_ok=True)
        with meter.stage("engine"):
            report = build_engine(out / precision_file, out / engine_file, graph, BuildOptions(
                workspace_mb=config.workspace_mb, timing_cache=timing_cache, batch=config.dynamic_batch,
                optimization_level=config.optimization_level, dla_core=config.dla_core,
                compute_capabilities=config.compute_capabilities), log=log, backend=backend.name)
        if backend.compute_capability:
            report["compute_capability"] = backend.compute_capability
        manifest.setdefault("engines", {})[engine_file] = report
        warnings += report.get("warnings", [])
        artifacts[engine_file] = {"sha256": sha256_file(out / engine_file), "bytes": (out / engine_file).stat().st_size}
        deployable = engine_file
    manifest["precision"] = config.precision
    manifest["backend"] = backend.name
    if warnings:
        manifest["warnings"] = warnings
    manifest["nms"] = nms
    manifest["compile"] = {"key": key, "config": asdict(config), "out_dir": str(out),
                           "backend_reason": backend.reason, "deployable": deployable,
                           "stages_seconds": meter.rounded_seconds(2), "stages_peak_rss_mb": meter.peak_rss_mb,
                           "process_peak_rss_mb": peak_rss_mb(),
                           "total_seconds": round(time.perf_counter() - start, 2), "cache_hit": False}
    write_json(out / MANIFEST, manifest)  # the key is written last: only a finished build is a cache hit
    log(f"compiled {out / deployable} in {time.perf_counter() - start:.1f} s")
    return manifest


def _describe_tailed(report: dict, path: Path, sha256: str, nms: str) -> None:
    """Point the precision report at ``path`` with its NMS tail: its hash, and the Q/DQ counts of that graph."""
    import onnx

    from effedge.quantize import qdq

    model = onnx.load(str(path))
    report["sha256"] = sha256
    report["nms_tail"] = nms
    if "qdq" in report:
        report["qdq"] = {**report["qdq"], **qdq.summary(model)}


def build_engine_file(source: Path, engine: Optional[Path] = None, *, backend: str = "tensorrt",
                      compute_capabilities: Optional[tuple[str, ...]] = None,
                      dynamic_batch: Optional[tuple[int, int, int]] = None, dla_core: Optional[int] = None,
                      workspace_mb: Optional[int] = None, optimization_level: Optional[int] = None,
                      timing_cache: Optional[Path] = None, version_compatible: bool = False,
                      hardware_compatible: bool = False, log: Callable[[str], None] = lambda message: None) -> dict:
    """The engine stage alone (``effedge build``): ``source`` ONNX -> ``engine`` (default: beside it), recorded
    as ``engines[<engine file>]`` in the build.json of the engine's directory. Reads the graph facts from that
    build.json where it describes ``source``, so a Jetson needs no onnx package."""
    from effedge.runtime.tensorrt import gpu_compute_capability
    from effedge.engine import BuildOptions, GraphInfo, build_engine

    if backend not in ENGINE_BACKENDS:
        raise EffedgeError(f"unknown engine backend {backend!r}; use one of {', '.join(ENGINE_BACKENDS)}")
    engine = engine or source.with_suffix(".engine")
    manifest_dir = engine.parent
    try:
        manifest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EffedgeError(f"cannot create {manifest_dir} for the engine: {exc.strerror or exc}; choose another "
                           "--out") from exc
    manifest = read_manifest(manifest_dir) if (manifest_dir / MANIFEST).is_file() else {"effedge_manifest": 1}
    same_dir = source.parent.resolve() == manifest_dir.resolve()
    if same_dir and "graph" in manifest:  # no onnx package needed (a Jetson with only tensorrt + numpy)
        graph = GraphInfo.from_manifest(manifest, source.name)
    else:
        graph = GraphInfo.from_onnx(source)
    batch = manifest.get("batch", {}) if same_dir else {}
    if dynamic_batch is None and "max" in batch:  # the profile the graph was exported for
        dynamic_batch = (batch["min"], batch["opt"], batch["max"])
    options = BuildOptions(workspace_mb=workspace_mb, timing_cache=timing_cache, batch=dynamic_batch,
                           optimization_level=optimization_level, dla_core=dla_core,
                           version_compatible=version_compatible, hardware_compatible=hardware_compatible,
                           compute_capabilities=compute_capabilities)
    report = build_engine(source, engine, graph, options, log=log, backend=backend)
    if backend == "tensorrt":
        report["compute_capability"] = gpu_compute_capability()
    report["source"] = {"file": source.name if same_dir else str(source.resolve()), "sha256": sha256_file(source)}
    report["file"] = engine.name
    manifest.setdefault("engines", {})[engine.name] = report
    manifest.setdefault("artifacts", {})[engine.name] = {"sha256": sha256_file(engine), "bytes": report["bytes"]}
    write_json(manifest_dir / MANIFEST, manifest)
    return report
