"""ONNX -> serialized engine with TensorRT (8.5, 8.6, 10.x, 11.x) or TensorRT-RTX (1.x).

Precision is in the graph (fp16 types, INT8 as Q/DQ). What the builder adds depends on the version's
capabilities (:mod:`effedge.engine.capabilities`): explicit-batch networks and FP16/INT8 flags for weakly typed
8.x networks; STRONGLY_TYPED networks on 10.x when the graph carries its precision; nothing on 11.x and
TensorRT-RTX, which are always strongly typed. TensorRT-RTX builds ahead of time, without a GPU, for the
compute capabilities asked for.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from effedge.io import atomic_write, write_json
from effedge.engine import layers as layer_report
from effedge.engine.capabilities import Capabilities, capabilities_of, compute_capability_targets, import_trt
from effedge.errors import BackendUnavailable, EffedgeError, RunError

NMS_OPS = {"EfficientNMS_TRT": "efficientnms", "NonMaxSuppression": "onnx"}


@dataclass(frozen=True)
class GraphInfo:
    """What the builder must know about the ONNX graph (read with onnx, or from build.json on a device)."""

    opset: int
    precision: str  # fp32 | fp16 | int8 | mixed — what the graph holds
    inputs: tuple[tuple[str, tuple], ...]  # (name, shape with None for dynamic dims)
    nms: str = "none"  # the NMS tail the graph ends in: none | onnx | efficientnms

    @classmethod
    def from_onnx(cls, path: Path) -> "GraphInfo":
        try:
            import onnx
        except ImportError:  # a device without onnx: ask for the manifest instead
            raise BackendUnavailable("reading ONNX needs the 'onnx' package; install it or build from a "
                                     "directory with build.json") from None
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError: a truncated or foreign file
            raise EffedgeError(f"cannot read {path} as ONNX ({exc}); export it again") from exc
        if not model.graph.input:
            raise EffedgeError(f"{path} holds no ONNX graph; export it again")
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        ops = {n.op_type for n in model.graph.node}
        has_fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
        precision = ("mixed" if "QuantizeLinear" in ops and has_fp16 and _has_unquantized_conv(model)
                     else "int8" if "QuantizeLinear" in ops else "fp16" if has_fp16 else "fp32")
        inputs = tuple(
            (i.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim))
            for i in model.graph.input)
        nms = next((tail for op, tail in NMS_OPS.items() if op in ops), "none")
        return cls(opset, precision, inputs, nms)

    @classmethod
    def from_manifest(cls, manifest: Mapping, onnx_name: str) -> "GraphInfo":
        """From build.json, for a device without the onnx package (``onnx_name``: the file to build)."""
        precision_name = onnx_name.split(".")[1] if onnx_name.count(".") >= 2 else "fp32"
        precision = precision_name if precision_name in ("fp16", "int8", "mixed") else "fp32"
        report = manifest.get("precisions", {}).get(precision, {})
        graph = manifest["graph"]["simplified"]
        opset = report.get("opset", graph["opset"])
        inputs = tuple((i["name"], tuple(d if isinstance(d, int) else None for d in i["shape"]))
                       for i in graph["inputs"])
        nms = manifest.get("nms", "none") if onnx_name == f"model.{manifest.get('precision')}.onnx" else "none"
        return cls(opset, precision, inputs, nms)


def _has_unquantized_conv(model) -> bool:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return any(producers.get(n.input[0]) != "DequantizeLinear" for n in model.graph.node if n.op_type == "Conv")


@dataclass(frozen=True)
class BuildOptions:
    workspace_mb: Optional[int] = None
    timing_cache: Optional[Path] = None
    batch: Optional[tuple[int, int, int]] = None  # (min, opt, max) for a dynamic batch dimension
    optimization_level: Optional[int] = None  # 0–5, TensorRT's default is 3
    dla_core: Optional[int] = None
    version_compatible: bool = False
    hardware_compatible: bool = False  # Ampere+ hardware compatibility
    layer_report: bool = True  # engine inspector report (detailed profiling verbosity)
    compute_capabilities: Optional[tuple[str, ...]] = None  # TensorRT-RTX targets, e.g. ("8.6", "8.9")


@dataclass
class BuildLog:
    """An ILogger that keeps every message (written to build.log)."""

    lines: list[str] = field(default_factory=list)

    def logger(self, trt):
        log = self

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                log.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

        return _Logger()

    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]


def check_graph(caps: Capabilities, graph: GraphInfo) -> None:
    """Refuse, before parsing, what this TensorRT cannot build."""
    if caps.max_onnx_opset is not None and graph.opset > caps.max_onnx_opset:
        raise EffedgeError(f"the ONNX graph uses opset {graph.opset}, {caps.name} parses up to "
                           f"{caps.max_onnx_opset}; re-export with --opset {caps.max_onnx_opset}")
    check_nms(caps, graph.nms)


def check_nms(caps: Capabilities, nms: str) -> None:
    """Refuse an NMS tail this TensorRT cannot run (TensorRT-RTX: no plugins, no NMS layer)."""
    if nms == "efficientnms" and not caps.plugins:
        raise EffedgeError(f"the EfficientNMS_TRT plugin (--nms efficientnms) does not exist in {caps.name}; use "
                           "--nms none (the Detector then runs NMS)")
    if nms == "onnx" and not caps.nms_layer:
        raise EffedgeError(f"ONNX NonMaxSuppression (--nms onnx) parses but cannot run on {caps.name}; use "
                           "--nms none (the Detector then runs NMS)")
    if nms == "onnx" and not caps.output_allocator:  # its outputs have data-dependent shapes
        raise EffedgeError(f"{caps.name} has no IOutputAllocator for the data-dependent outputs of ONNX "
                           "NonMaxSuppression (--nms onnx); use --nms efficientnms or --nms none")


def check_batch_profile(options: BuildOptions, graph: GraphInfo, dynamic: bool) -> None:
    """A dynamic batch needs a profile MIN <= OPT <= MAX, all >= 1; a static graph takes none."""
    if options.batch is None:
        if dynamic:
            raise EffedgeError("the ONNX graph has a dynamic batch dimension; give --dynamic-batch MIN:OPT:MAX")
        return
    low, opt, high = options.batch
    if not dynamic:
        batch = graph.inputs[0][1][0] if graph.inputs and graph.inputs[0][1] else None
        raise EffedgeError(f"--dynamic-batch {low}:{opt}:{high} needs a graph with a dynamic batch dimension, this one "
                           f"has a static batch of {batch}; re-export it with --dynamic-batch, or drop the option")
    if not 1 <= low <= opt <= high:
        raise EffedgeError(f"--dynamic-batch {low}:{opt}:{high}: the profile must be 1 <= MIN <= OPT <= MAX, "
                           "e.g. 1:4:8")


def check_options(caps: Capabilities, options: BuildOptions, graph: GraphInfo, dynamic: bool) -> None:
    since_86 = (("--opt-level", options.optimization_level is not None, caps.optimization_level),
                ("--hardware-compatible", options.hardware_compatible, caps.hardware_compatibility),
                ("--version-compatible", options.version_compatible, caps.version_compatibility))
    for option, given, available in since_86:
        if given and not available:
            raise EffedgeError(f"{option} needs TensorRT 8.6 or newer, {caps.name} does not have it; drop {option}")
    if options.dla_core is not None:
        if not caps.dla:
            raise EffedgeError(f"{caps.name} has no DLA; drop --dla (DLA is on Jetson AGX Orin / Orin NX)")
        if graph.precision == "fp32":
            raise EffedgeError("DLA runs fp16 or int8 only; compile with --precision fp16, int8 or mixed")
        if dynamic:
            raise EffedgeError("DLA needs static shapes; use --batch N instead of --dynamic-batch")
    if options.compute_capabilities and not caps.compute_capability_targets:
        raise EffedgeError(f"{caps.name} builds for the GPU it runs on; --compute-capability is for "
                           "--backend tensorrt-rtx")
    check_batch_profile(options, graph, dynamic)


def network_flags(trt, caps: Capabilities, graph: GraphInfo) -> int:
    flags = 0
    if caps.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if caps.strongly_typed_flag and graph.precision != "fp32":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def build_engine(onnx_path: Path, engine_path: Path, graph: GraphInfo, options: BuildOptions = BuildOptions(),
                 log: Callable[[str], None] = lambda message: None, backend: str = "tensorrt") -> dict:
    """Parse ``onnx_path`` and write the serialized engine atomically to ``engine_path``; returns the engine's
    build.json entry (product and version, targets, flags used, seconds, layer report, log file names)."""
    trt = import_trt(backend)
    caps = capabilities_of(trt)
    dynamic = any(None in shape[:1] for _, shape in graph.inputs)
    check_graph(caps, graph)
    check_options(caps, options, graph, dynamic)
    build_log = BuildLog()
    logger = build_log.logger(trt)
    if caps.plugins:  # plugin nodes (EfficientNMS_TRT) resolve only after the plugin library registered them
        trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    flags = network_flags(trt, caps, graph)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EffedgeError(f"{caps.name} cannot parse {onnx_path.name}: " + _parser_errors(parser))

    config = builder.create_builder_config()
    used: dict = {"network_flags": flags, "builder_flags": []}

    def set_flag(name: str) -> None:
        config.set_flag(getattr(trt.BuilderFlag, name))
        used["builder_flags"].append(name)

    strongly_typed = caps.always_strongly_typed or (caps.strongly_typed_flag and graph.precision != "fp32")
    if caps.precision_flags and not strongly_typed and graph.precision != "fp32":  # what the graph asks for
        set_flag("FP16")
        if graph.precision in ("int8", "mixed"):
            set_flag("INT8")
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    if options.layer_report:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.version_compatible:
        set_flag("VERSION_COMPATIBLE")
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if dynamic:
        profile = builder.create_optimization_profile()
        low, opt, high = options.batch
        for name, shape in graph.inputs:
            rest = tuple(shape[1:])
            profile.set_shape(name, (low, *rest), (opt, *rest), (high, *rest))
        if config.add_optimization_profile(profile) < 0:  # -1: TensorRT found the profile invalid
            errors = build_log.errors()
            raise EffedgeError(f"{caps.name} refused the optimization profile --dynamic-batch {low}:{opt}:{high} for "
                               f"{onnx_path.name}" + (f": {errors[-1]}" if errors else "")
                               + "; check the graph's input shapes")
        used["batch_profile"] = [low, opt, high]
    if options.dla_core is not None:
        _configure_dla(trt, builder, config, options.dla_core)
        used["builder_flags"].append("GPU_FALLBACK")
    targets = _set_compute_capabilities(trt, config, options.compute_capabilities) \
        if caps.compute_capability_targets else None
    timing_cache = None
    if caps.timing_cache:
        cache_blob = (options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file()
                      else b"")
        timing_cache = config.create_timing_cache(cache_blob)
        config.set_timing_cache(timing_cache, False)

    log(f"building the {caps.name} engine" + (
        "" if targets is None else " for TensorRT-RTX's default GPU targets" if targets == ["default"] else
        f" for compute capability {', '.join(targets)}")
        + ("" if caps.compute_capability_targets else " (this takes minutes)"))
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    log_path = engine_path.with_suffix(".build.log")
    atomic_write(log_path, "\n".join(build_log.lines).encode())
    if serialized is None:
        errors = build_log.errors()
        raise RunError(f"{caps.name} could not build the engine: {errors[-1] if errors else 'no reason given'} "
                           f"(full log: {log_path})")
    plan = bytes(serialized)
    atomic_write(engine_path, plan)
    if timing_cache is not None and options.timing_cache:
        atomic_write(options.timing_cache, bytes(config.get_timing_cache().serialize()))

    report = {"backend": caps.backend, "product": caps.product, "version": caps.version, "series": caps.series,
              "seconds": round(seconds, 2), "bytes": len(plan), "precision": graph.precision,
              "build_log": log_path.name, "options": _jsonable(asdict(options)), **used}
    warning = int8_warning(caps, graph)
    if warning:
        log(f"warning: {warning}")
        report["warnings"] = [warning]
    if targets is not None:
        report["compute_capabilities"] = targets
    if options.layer_report:
        report["layers"] = _layer_report(trt, logger, plan, build_log, engine_path, options.version_compatible)
    return report


def int8_warning(caps: Capabilities, graph: GraphInfo) -> Optional[str]:
    """One line when ``graph``'s INT8 cannot run as INT8 on ``caps`` (TensorRT-RTX: no INT8 convolution)."""
    if graph.precision not in ("int8", "mixed") or caps.int8_convolution:
        return None
    return (f"{caps.name} has no native INT8 convolution: it converts each Q/DQ convolution to fp32 (a larger, "
            f"slower engine than fp16); fp16 is the better choice here (--precision fp16)")


def _set_compute_capabilities(trt, config, wanted: Optional[tuple[str, ...]]) -> list[str]:
    """Set TensorRT-RTX's targets; None keeps its default set. Returns the targets built for."""
    available = compute_capability_targets(trt)
    if not wanted:
        return ["default"]
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise EffedgeError(f"--compute-capability {','.join(unknown)}: TensorRT-RTX builds for "
                           f"{', '.join(available)}")
    config.num_compute_capabilities = len(wanted)
    for index, capability in enumerate(wanted):
        if not config.set_compute_capability(available[capability], index):
            raise EffedgeError(f"TensorRT-RTX refused compute capability {capability}")
    return list(wanted)


def _layer_report(trt, logger, plan: bytes, build_log: BuildLog, engine_path: Path,
                  version_compatible: bool) -> dict:
    """Layer count and reformat layers from the engine inspector; the JSON goes to ``<engine>.layers.json``."""
    report = None
    if _can_deserialize(trt, logger, plan):
        runtime = trt.Runtime(logger)
        if version_compatible:  # such a plan deserializes only with host code allowed (it carries its runtime)
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is not None:
            text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
            atomic_write(engine_path.with_suffix(".layers.json"), text.encode())
            report = layer_report.from_inspector_json(text)
    if report is None:  # built ahead of time for another GPU (TensorRT-RTX without one here)
        report = layer_report.from_build_log(build_log.lines) or {"source": "unavailable", "layers": None,
                                                                   "reformat_layers": None}
        if report.get("layers") is not None:
            write_json(engine_path.with_suffix(".layers.json"), report)
    report["file"] = engine_path.with_suffix(".layers.json").name if report.get("layers") is not None else None
    return report


def _can_deserialize(trt, logger, plan: bytes) -> bool:
    """TensorRT-RTX says up front whether this machine can run the plan; full TensorRT builds on the GPU that
    runs it, so it always can."""
    runtime_class = trt.Runtime
    if not hasattr(runtime_class, "get_engine_validity"):
        return True
    validity, _ = runtime_class(logger).get_engine_validity(plan)
    return validity == trt.EngineValidity.VALID


def _configure_dla(trt, builder, config, core: int) -> None:
    available = builder.num_DLA_cores
    if available == 0:
        raise EffedgeError("DLA requested but this GPU has no DLA cores (AGX Orin and Orin NX have 2, Orin Nano "
                           "none); drop --dla")
    if not 0 <= core < available:
        raise EffedgeError(f"--dla {core}: this device has DLA cores 0..{available - 1}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _parser_errors(parser) -> str:
    messages = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node()
        where = f"node {node}" if node >= 0 else "graph"
        name = getattr(error, "node_name", None)
        operator = getattr(error, "node_operator", None)
        if name is not None:
            where += f" '{name()}'"
        if operator is not None:
            where += f" ({operator()})"
        messages.append(f"{where}: {error.desc()}")
    return "; ".join(messages) or "no reason given"


def _jsonable(options: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in options.items()}
