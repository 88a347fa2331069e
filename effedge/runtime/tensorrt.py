"""TensorRT runner: deserializes an engine and runs it with set_tensor_address + execute_async_v3.

Engines are built by :mod:`effedge.engine`; tests run this module against the real API surface of TensorRT
8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106 (tests/test_tensorrt_backend.py). The TensorRT-RTX runner
(:mod:`effedge.runtime.tensorrt_rtx`) is this runner on ``tensorrt_rtx``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from effedge.runtime import cuda
from effedge.runtime.base import Runner, TensorInfo
from effedge.engine.capabilities import PRODUCTS, capabilities_of, compute_capability_targets, import_trt
from effedge.errors import BackendUnavailable, EffedgeError, RunError

ENGINE_SUFFIX = ".engine"


def import_tensorrt():
    return import_trt("tensorrt")


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
    (:func:`effedge.runtime.cuda.device_info` says which); any other CUDA failure raises."""
    try:
        return cuda.device_info(0).compute_capability
    except BackendUnavailable:
        return None


def engine_entry(manifest: Mapping, engine_path: Path) -> Optional[Mapping]:
    """The build.json entry ``effedge compile``/``effedge build`` wrote for this engine file (``engines[<file
    name>]``), or None where there is none or it describes an earlier file: a recorded size that differs means
    the engine was replaced since (rebuilt by another tool), and the entry says nothing about it."""
    entry = (manifest.get("engines") or {}).get(engine_path.name)
    if not entry:
        return None
    recorded = entry.get("bytes")
    if recorded is not None and engine_path.is_file() and engine_path.stat().st_size != recorded:
        return None
    return entry


def engine_backend(manifest: Mapping, engine_path: Path) -> str:
    """"tensorrt-rtx" for an engine its build.json entry says TensorRT-RTX built, else "tensorrt"."""
    entry = engine_entry(manifest, engine_path) or {}
    return "tensorrt-rtx" if entry.get("backend") == "tensorrt-rtx" else "tensorrt"


def engine_runner(engine_path: str | Path, manifest: Mapping, backend: Optional[str] = None, *,
                  cuda_graph: bool = False) -> TensorRTRunner:
    """The runner for an engine file: ``backend`` ("tensorrt" or "tensorrt-rtx"), or by default the one that
    built it according to its build.json entry."""
    engine_path = Path(engine_path)
    if (backend or engine_backend(manifest, engine_path)) == "tensorrt-rtx":
        from effedge.runtime.tensorrt_rtx import TensorRTRTXRunner

        return TensorRTRTXRunner(engine_path, manifest=manifest, cuda_graph=cuda_graph)
    return TensorRTRunner(engine_path, manifest=manifest, cuda_graph=cuda_graph)


def check_engine_compatible(entry: Optional[Mapping], trt, compute_capability: Optional[str], *,
                            gpu_name: Optional[str] = None) -> None:
    """Refuse, before deserializing, an engine that ``trt`` cannot run on this GPU, in one line saying what to
    do. ``entry`` is the engine's own build.json entry (:func:`engine_entry`; None: nothing is known about the
    engine, so only the GPU is checked).

    Full TensorRT runs an engine with the version and on the GPU (compute capability) that built it, unless it
    was built version- or hardware-compatible. TensorRT-RTX runs only on the compute capabilities it knows (it
    refuses Hopper and Jetson Orin) and, where the engine was built for chosen targets, on those.
    """
    caps = capabilities_of(trt)
    this_gpu = f"this GPU ({gpu_name})" if gpu_name else "this GPU"
    if caps.compute_capability_targets and compute_capability:
        supported = list(compute_capability_targets(trt))
        if compute_capability not in supported:
            raise EffedgeError(f"{caps.product} engines run on compute capability {', '.join(supported)}; "
                               f"{this_gpu} is {compute_capability}: use --backend tensorrt (full TensorRT) on it")
    if not entry:
        return
    built_by = entry.get("backend")
    if built_by in PRODUCTS and built_by != caps.backend:
        product = entry.get("product") or PRODUCTS[built_by][1]
        raise EffedgeError(f"the engine was built with {product} {entry.get('version', '')}".rstrip()
                           + f", which {caps.product} cannot run: use --backend {built_by}")
    options = entry.get("options") or {}
    if caps.compute_capability_targets:
        targets = entry.get("compute_capabilities") or ["default"]
        if "default" not in targets and compute_capability and compute_capability not in targets:
            raise EffedgeError(f"the engine was built for compute capability {', '.join(targets)}; {this_gpu} is "
                               f"{compute_capability}: rebuild it with effedge build --backend tensorrt-rtx "
                               f"--compute-capability {compute_capability}")
        return  # the TensorRT-RTX version is judged by Runtime.get_engine_validity, from the plan itself
    built_with = entry.get("version")
    if built_with and built_with != trt.__version__ and not options.get("version_compatible"):
        raise EffedgeError(f"the engine was built with TensorRT {built_with}, this machine has {trt.__version__}; "
                           "rebuild it here (effedge build)")
    built_for = entry.get("compute_capability")
    if built_for and compute_capability and built_for != compute_capability and not options.get("hardware_compatible"):
        raise EffedgeError(f"the engine was built for a GPU of compute capability {built_for}, {this_gpu} is "
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
    """Runs a serialized engine through :mod:`effedge.runtime.cuda`: page-locked host and device buffers
    sized for the largest shapes, copies of only the bytes the current shapes need, set_tensor_address +
    execute_async_v3 on one stream, set_input_shape for a dynamic batch, and optionally a CUDA graph,
    re-captured when the input shapes change.

    A runner for another flavour of TensorRT with the same Python API overrides :meth:`_import_module` (and
    :meth:`_check_plan`, :meth:`_create_context` for what that flavour adds).

    After activation, ``startup`` holds what starting cost (``deserialize_seconds``, ``context_seconds``) and
    ``notes`` what the user should know but that did not stop the run (warnings).
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
        self.startup, self.notes = {}, []
        trt = self._import_module()
        api = cuda.load()
        if self.cuda_graph and not api.supports_graphs:
            raise BackendUnavailable(f"CUDA graphs need cuda-python ({api.library} has no stream capture): "
                                     f"{cuda.INSTALL_HINT}")
        device = cuda.device_info(0, api)
        check_engine_compatible(engine_entry(self.manifest, self.engine_path), trt, device.compute_capability,
                                gpu_name=device.name)
        data = self.engine_path.read_bytes()
        self.trt, self.cuda_api, self.caps = trt, api, capabilities_of(trt)
        self.logger = trt.Logger(trt.Logger.WARNING)
        # Full TensorRT keeps its bundled plugins (EfficientNMS, ...) in a library that must be registered
        # before an engine using them is deserialized; TensorRT-RTX has none.
        if self.caps.plugins and not trt.init_libnvinfer_plugins(self.logger, ""):
            raise RunError(f"{self.caps.name} could not register its plugin library (libnvinfer_plugin); "
                               "reinstall TensorRT")
        self.runtime = trt.Runtime(self.logger)
        self._check_plan(data)
        start = time.perf_counter()
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EffedgeError(f"{self.engine_path} is not a {self.caps.name} engine (corrupt, truncated or built "
                               "by another version); rebuild it with effedge build")
        self.startup["deserialize_seconds"] = time.perf_counter() - start
        try:
            self.stream = cuda.Stream(api=api)  # also makes the CUDA context current before the context is made
            start = time.perf_counter()
            self.context = self._create_context()
            if self.context is None:
                raise RunError(f"{self.caps.name} could not create an execution context for {self.engine_path} "
                                   "(see its log above; often too little free GPU memory)")
            self.startup["context_seconds"] = time.perf_counter() - start
            self._allocate()
        except BaseException:
            self.deactivate()
            raise

    def _check_plan(self, data: bytes) -> None:
        """Refuse a serialized engine before deserializing it, where the flavour can tell (full TensorRT cannot:
        :func:`check_engine_compatible` judges from build.json)."""

    def _create_context(self):
        return self.engine.create_execution_context()

    def _allocate(self) -> None:
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

    def batch_range(self) -> tuple[int, Optional[int]]:
        """A dynamic batch spans the optimization profile the runner uses (profile 0)."""
        dynamic = [name for name, t in self.tensors.items() if t.is_input and t.declared_shape[0] == -1]
        if not dynamic:
            return super().batch_range()
        return (max(self.engine.get_tensor_profile_shape(name, 0)[0][0] for name in dynamic),
                min(t.max_shape[0] for t in self.tensors.values() if t.is_input))

    def check_inputs(self, feed: Mapping[str, np.ndarray]) -> None:
        super().check_inputs(feed)
        for name, array in feed.items():
            if array.size > np.prod(self.tensors[name].max_shape):
                raise EffedgeError(f"{self.name}: input '{name}' batch {array.shape[0]} exceeds the engine's maximum "
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
                raise EffedgeError(f"{self.name}: input '{name}' shape {shape} is outside the engine's optimization "
                                   f"profile (largest {tensor.max_shape})")
        outputs = {name: tuple(self.context.get_tensor_shape(name)) for name, t in self.tensors.items()
                   if not t.is_input}
        unknown = [name for name, shape in outputs.items() if -1 in shape]
        if unknown:
            raise EffedgeError(f"{self.name}: outputs {unknown} have data-dependent shapes, which the runner does not "
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
            raise RunError(f"TensorRT execute_async_v3 failed{when} (see the TensorRT log above)")

    def _destroy_graph(self) -> None:
        if self._graph is not None:
            self._graph.destroy()
            self._graph = None
