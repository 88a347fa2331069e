"""TensorRT backend: ONNX -> serialized engine (per-version API), and a runner on :mod:`effedge.backends.cuda`.

Precision is in the graph (fp16 types, INT8 as Q/DQ; :mod:`effedge.precision`). What differs by version:

* 8.5/8.6 — explicit-batch networks; a graph holding fp16 or Q/DQ also needs the FP16 / INT8 builder flags
  (weakly typed networks otherwise run those layers in fp32);
* 10.x — networks are created STRONGLY_TYPED when the graph carries its precision, so TensorRT follows the
  graph's types exactly (and the FP16/INT8 flags must not be set);
* 11.x — every network is strongly typed; the FP16/INT8 flags and calibrators no longer exist.

Only the calls listed in DESIGN.md §2 for each version are used; tests run this module against the real API
surface of TensorRT 8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106 (tests/test_tensorrt_backend.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from effedge.backends import Runner, TensorInfo, cuda
from effedge.errors import BackendUnavailable, EffedgeError

# Newest ONNX opset each TensorRT major's parser imports (onnx-tensorrt release notes).
MAX_ONNX_OPSET = {8: 17, 10: 20, 11: 22}
ENGINE_SUFFIX = ".engine"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed (Python module 'tensorrt'); on Jetson it comes with "
                                 "JetPack, on desktop from NVIDIA's index (pip install tensorrt); or use "
                                 "--backend onnxruntime") from exc
    return tensorrt


def trt_version(trt) -> tuple[int, ...]:
    return tuple(int(part) for part in trt.__version__.split(".")[:3] if part.isdigit())


_NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


def numpy_dtype(data_type) -> np.dtype:
    """NumPy type of a ``trt.DataType`` (by member name: ``trt.nptype`` is in the Python wrapper of the
    tensorrt package, not in every binding build)."""
    name = getattr(data_type, "name", str(data_type).rsplit(".", 1)[-1])
    if name not in _NUMPY_TYPES:
        raise EffedgeError(f"engine I/O of TensorRT type {name} is not supported by the runner")
    return np.dtype(_NUMPY_TYPES[name])


def gpu_compute_capability() -> Optional[str]:
    """"8.7"-style compute capability of GPU 0, or None where no CUDA bindings, driver or GPU are present
    (:func:`effedge.backends.cuda.device_info` says which); any other CUDA failure raises."""
    try:
        return cuda.device_info(0).compute_capability
    except BackendUnavailable:
        return None


@dataclass(frozen=True)
class GraphInfo:
    """What the builder must know about the ONNX graph (read with onnx, or from build.json on a device)."""

    opset: int
    precision: str  # fp32 | fp16 | int8 | mixed — what the graph holds
    inputs: tuple[tuple[str, tuple], ...]  # (name, shape with None for dynamic dims)

    @classmethod
    def from_onnx(cls, path: Path) -> "GraphInfo":
        try:
            import onnx
        except ImportError:  # a device without onnx: ask for the manifest instead
            raise BackendUnavailable("reading ONNX needs the 'onnx' package; install it or build from a "
                                     "directory with build.json") from None
        model = onnx.load(str(path), load_external_data=False)
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        ops = {n.op_type for n in model.graph.node}
        has_fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
        precision = ("mixed" if "QuantizeLinear" in ops and has_fp16 and _has_unquantized_conv(model)
                     else "int8" if "QuantizeLinear" in ops else "fp16" if has_fp16 else "fp32")
        inputs = tuple(
            (i.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim))
            for i in model.graph.input)
        return cls(opset, precision, inputs)


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
        return cls(opset, precision, inputs)


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
    layer_report: bool = True  # engine inspector JSON (detailed profiling verbosity)


@dataclass
class BuildLog:
    """An ILogger that keeps every message (written to build.log) and echoes warnings and errors."""

    lines: list[str] = field(default_factory=list)

    def logger(self, trt):
        log = self

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                log.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

        return _Logger()


def check_opset(trt, opset: int) -> None:
    major = trt_version(trt)[0]
    limit = MAX_ONNX_OPSET.get(major, max(MAX_ONNX_OPSET.values()))
    if opset > limit:
        raise EffedgeError(f"the ONNX graph uses opset {opset}, TensorRT {trt.__version__} parses up to {limit}; "
                           f"re-export with --opset {limit}")


def build_engine(onnx_path: Path, engine_path: Path, graph: GraphInfo, options: BuildOptions = BuildOptions(),
                 log=lambda message: None) -> dict:
    """Parse ``onnx_path`` and write the serialized engine atomically to ``engine_path``; returns a report
    (TensorRT version, flags used, seconds, build log and layer report file names)."""
    trt = import_tensorrt()
    major = trt_version(trt)[0]
    check_opset(trt, graph.opset)
    build_log = BuildLog()
    logger = build_log.logger(trt)
    builder = trt.Builder(logger)
    dynamic = any(None in shape[:1] for _, shape in graph.inputs)
    explicit_precision = graph.precision != "fp32"
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    elif major == 10 and explicit_precision:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EffedgeError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: " + _parser_errors(parser))

    config = builder.create_builder_config()
    used: dict = {"network_flags": flags, "builder_flags": []}

    def set_flag(name: str) -> None:
        config.set_flag(getattr(trt.BuilderFlag, name))
        used["builder_flags"].append(name)

    if major < 10 and explicit_precision:  # weakly typed: enable the precisions the graph asks for
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
        low, opt, high = options.batch or (1, 1, 1)
        for name, shape in graph.inputs:
            rest = tuple(shape[1:])
            profile.set_shape(name, (low, *rest), (opt, *rest), (high, *rest))
        config.add_optimization_profile(profile)
    if options.dla_core is not None:
        _configure_dla(trt, builder, config, options.dla_core, graph, dynamic)
        used["builder_flags"].append("GPU_FALLBACK")

    cache_blob = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(timing_cache, False)

    log(f"building the TensorRT {trt.__version__} engine (this takes minutes)")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    log_path = engine_path.with_suffix(".build.log")
    _write_atomic(log_path, "\n".join(build_log.lines).encode())
    if serialized is None:
        errors = [line for line in build_log.lines if line.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
        raise EffedgeError(f"TensorRT could not build the engine: {errors[-1] if errors else 'no reason given'} "
                           f"(full log: {log_path})")
    _write_atomic(engine_path, bytes(serialized))
    if options.timing_cache:
        _write_atomic(options.timing_cache, bytes(config.get_timing_cache().serialize()))

    report = {"tensorrt": trt.__version__, "seconds": round(seconds, 2), "precision": graph.precision,
              "build_log": log_path.name, "options": _jsonable(asdict(options)), **used}
    if options.layer_report:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(bytes(serialized))
        inspector = engine.create_engine_inspector()
        layers_path = engine_path.with_suffix(".layers.json")
        _write_atomic(layers_path, inspector.get_engine_information(trt.LayerInformationFormat.JSON).encode())
        report["layer_report"] = layers_path.name
    return report


def _configure_dla(trt, builder, config, core: int, graph: GraphInfo, dynamic: bool) -> None:
    available = builder.num_DLA_cores
    if available == 0:
        raise EffedgeError("DLA requested but this GPU has no DLA cores (AGX Orin and Orin NX have 2, Orin Nano "
                           "none); drop --dla")
    if not 0 <= core < available:
        raise EffedgeError(f"--dla {core}: this device has DLA cores 0..{available - 1}")
    if graph.precision == "fp32":
        raise EffedgeError("DLA runs fp16 or int8 only; compile with --precision fp16, int8 or mixed")
    if dynamic:
        raise EffedgeError("DLA needs static shapes; use --batch N instead of --dynamic-batch")
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonable(options: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


def check_engine_compatible(manifest: Mapping, trt, compute_capability: Optional[str]) -> None:
    """Refuse an engine built by another TensorRT or for another GPU (engines are not portable unless built
    version- or hardware-compatible), before deserializing it."""
    engine = manifest.get("engine") or {}
    built_with = engine.get("tensorrt")
    if built_with and built_with != trt.__version__ and not engine.get("options", {}).get("version_compatible"):
        raise EffedgeError(f"the engine was built with TensorRT {built_with}, this machine has {trt.__version__}; "
                           "rebuild it here (effedge build)")
    built_for = engine.get("compute_capability")
    if built_for and compute_capability and built_for != compute_capability \
            and not engine.get("options", {}).get("hardware_compatible"):
        raise EffedgeError(f"the engine was built for a GPU of compute capability {built_for}, this GPU is "
                           f"{compute_capability}; rebuild it here (effedge build)")


@dataclass
class IoTensor:
    """One engine input or output and its buffers, sized for the largest shape the engine accepts."""

    name: str
    is_input: bool
    dtype: np.dtype
    declared_shape: tuple  # -1 for dynamic dimensions
    max_shape: tuple
    host: cuda.PinnedBuffer
    device: cuda.DeviceBuffer

    def nbytes(self, shape: tuple) -> int:
        return int(np.prod(shape)) * self.dtype.itemsize


class TensorRTRunner(Runner):
    """Runs a serialized engine through :mod:`effedge.backends.cuda`: page-locked host and device buffers
    sized for the largest shapes, copies of only the bytes the current shapes need, set_tensor_address +
    execute_async_v3 on one stream, set_input_shape for a dynamic batch, and optionally a CUDA graph,
    re-captured when the input shapes change.

    A runner for another flavour of TensorRT with the same Python API overrides :meth:`_import_module`.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, *, manifest: Optional[Mapping] = None, cuda_graph: bool = False):
        super().__init__()
        self.engine_path = Path(engine_path)
        self.manifest = manifest or {}
        self.cuda_graph = cuda_graph
        self.tensors: dict[str, IoTensor] = {}
        self.stream: Optional[cuda.Stream] = None
        self.context = self.engine = self.runtime = None
        self._graph: Optional[cuda.CudaGraph] = None
        self._input_shapes: dict[str, tuple] = {}
        self._output_shapes: dict[str, tuple] = {}

    def _import_module(self):
        """The TensorRT Python module (the one place the runner imports it)."""
        return import_tensorrt()

    def activate(self) -> None:
        trt = self._import_module()
        api = cuda.load()
        if self.cuda_graph and not api.supports_graphs:
            raise BackendUnavailable(f"CUDA graphs need cuda-python ({api.library} has no stream capture): "
                                     f"{cuda.INSTALL_HINT}")
        device = cuda.device_info(0, api)
        check_engine_compatible(self.manifest, trt, device.compute_capability)
        data = self.engine_path.read_bytes()
        self.trt, self.cuda_api = trt, api
        self.logger = trt.Logger(trt.Logger.WARNING)
        # Full TensorRT keeps its bundled plugins (EfficientNMS, ...) in a library that must be registered
        # before an engine using them is deserialized.
        if hasattr(trt, "init_libnvinfer_plugins") and not trt.init_libnvinfer_plugins(self.logger, ""):
            raise EffedgeError(f"TensorRT {trt.__version__} could not register its plugin library "
                               "(libnvinfer_plugin); reinstall TensorRT")
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EffedgeError(f"{self.engine_path} is not a TensorRT {trt.__version__} engine (corrupt, truncated "
                               "or built by another version); rebuild it with effedge build")
        self.context = self.engine.create_execution_context()
        try:
            self._allocate()
        except BaseException:
            self.deactivate()
            raise

    def _allocate(self) -> None:
        self.stream = cuda.Stream(api=self.cuda_api)
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
            dtype = numpy_dtype(self.engine.get_tensor_dtype(name))
            declared = tuple(self.engine.get_tensor_shape(name))
            if is_input and -1 in declared:
                max_shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # the profile's max shape
            elif -1 in declared:
                max_shape = tuple(self._max_output_shape(name, declared))
            else:
                max_shape = declared
            count = int(np.prod(max_shape))
            host = cuda.PinnedBuffer(count, dtype, api=self.cuda_api)
            try:
                device = cuda.DeviceBuffer(count * dtype.itemsize, api=self.cuda_api)
            except BaseException:
                host.free()
                raise
            self.tensors[name] = IoTensor(name, is_input, dtype, declared, max_shape, host, device)
            self.context.set_tensor_address(name, device.address)

    def _max_output_shape(self, name: str, shape: tuple) -> tuple:
        """Output buffers for a dynamic batch are sized for the optimization profile's largest batch."""
        inputs = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)
                  if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == self.trt.TensorIOMode.INPUT]
        batch = max(self.engine.get_tensor_profile_shape(n, 0)[2][0] for n in inputs)
        return tuple(batch if d == -1 else d for d in shape)

    def deactivate(self) -> None:
        self._destroy_graph()
        self.context = self.engine = self.runtime = None
        for tensor in self.tensors.values():
            tensor.host.free()
            tensor.device.free()
        self.tensors = {}
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self._input_shapes, self._output_shapes = {}, {}

    def input_info(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(self.engine.get_tensor_shape(n)), t.dtype)
                for n, t in self.tensors.items() if t.is_input]

    def output_info(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(self.engine.get_tensor_shape(n)), t.dtype)
                for n, t in self.tensors.items() if not t.is_input]

    def check_inputs(self, feed: Mapping[str, np.ndarray]) -> None:
        super().check_inputs(feed)
        for name, array in feed.items():
            if array.size > np.prod(self.tensors[name].max_shape):
                raise EffedgeError(f"tensorrt: input '{name}' batch {array.shape[0]} exceeds the engine's maximum "
                                   f"{self.tensors[name].max_shape[0]}")

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.set_inputs(feed)
        self.copy_inputs_async()
        self.enqueue()
        self.copy_outputs_async()
        self.stream.synchronize()
        return self.outputs()

    # The steps of one inference, public so that bench can time each on the stream.

    def set_inputs(self, feed: Mapping[str, np.ndarray]) -> None:
        """Give TensorRT the input shapes (when they change) and fill the page-locked input buffers."""
        shapes = {name: tuple(array.shape) for name, array in feed.items()}
        if shapes != self._input_shapes:
            self._set_shapes(shapes)
        for name, array in feed.items():
            tensor = self.tensors[name]
            tensor.host.array[: array.size] = np.ascontiguousarray(array, dtype=tensor.dtype).reshape(-1)

    def _set_shapes(self, shapes: dict[str, tuple]) -> None:
        self._destroy_graph()  # a graph replays the shapes it was captured with
        self._input_shapes = {}  # until every shape is accepted
        for name, shape in shapes.items():
            tensor = self.tensors[name]
            if -1 in tensor.declared_shape and not self.context.set_input_shape(name, shape):
                raise EffedgeError(f"tensorrt: input '{name}' shape {shape} is outside the engine's optimization "
                                   f"profile (largest {tensor.max_shape})")
        outputs = {name: tuple(self.context.get_tensor_shape(name)) for name, t in self.tensors.items()
                   if not t.is_input}
        unknown = [name for name, shape in outputs.items() if -1 in shape]
        if unknown:
            raise EffedgeError(f"tensorrt: outputs {unknown} have data-dependent shapes, which the runner does not "
                               "support; export the model with fixed-size outputs (e.g. --nms efficientnms)")
        self._input_shapes, self._output_shapes = shapes, outputs

    def copy_inputs_async(self) -> None:
        """Host-to-device copies of the current inputs' bytes (not the whole buffers) on the stream."""
        for name, shape in self._input_shapes.items():
            tensor = self.tensors[name]
            cuda.copy_htod_async(tensor.device, tensor.host.array, tensor.nbytes(shape), self.stream)

    def copy_outputs_async(self) -> None:
        """Device-to-host copies of the current outputs' bytes on the stream."""
        for name, shape in self._output_shapes.items():
            tensor = self.tensors[name]
            cuda.copy_dtoh_async(tensor.host.array, tensor.device, tensor.nbytes(shape), self.stream)

    def outputs(self) -> dict[str, np.ndarray]:
        """Copies of the outputs in the host buffers (after copy_outputs_async and a stream synchronize)."""
        return {name: self.tensors[name].host.array[: int(np.prod(shape))].reshape(shape).copy()
                for name, shape in self._output_shapes.items()}

    def enqueue(self) -> None:
        """Launch inference on the stream: execute_async_v3, or the CUDA graph (captured on first use)."""
        if not self.cuda_graph:
            self._execute("")
            return
        if self._graph is None:
            # TensorRT updates its state on the first enqueue after a shape change: capture after it.
            self._execute(" before CUDA graph capture")
            self.stream.synchronize()
            self._graph = cuda.CudaGraph.capture(self.stream, lambda: self._execute(" during CUDA graph capture"))
        self._graph.launch(self.stream)

    def _execute(self, when: str) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise EffedgeError(f"TensorRT execute_async_v3 failed{when} (see the TensorRT log above)")

    def _destroy_graph(self) -> None:
        if self._graph is not None:
            self._graph.destroy()
            self._graph = None
