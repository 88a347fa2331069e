"""TensorRT runner: deserializes an engine and runs it with set_tensor_address + execute_async_v3.

Engines are built by :mod:`effedge.engine`; tests run this module against the real API surface of TensorRT
8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106 (tests/test_tensorrt_backend.py). The TensorRT-RTX runner
(:mod:`effedge.runtime.tensorrt_rtx`) is this runner on ``tensorrt_rtx``; :func:`effedge.runtime.engines.engine_runner`
picks between them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

import effedge.runtime.cuda as cuda
from effedge.runtime.base import Runner, TensorInfo
from effedge.runtime.engine_manifest import check_engine_compatible, engine_entry
from effedge.engine.capabilities import capabilities_of, import_trt
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


@dataclass
class IoTensor:
    """One engine input or output and its buffers, sized for the largest shape the engine accepts. An output
    of data-dependent shape (the NMS layer's) has an ``allocator`` instead: TensorRT asks it for device memory
    and tells it the shape while it runs; its host buffer grows to fit."""

    name: str
    is_input: bool
    dtype: np.dtype
    declared_shape: tuple  # -1 for dynamic dimensions
    max_shape: Optional[tuple]  # None: data-dependent
    host: Optional[cuda.PinnedBuffer]
    device: Optional[cuda.DeviceBuffer]
    allocator: Optional["OutputAllocator"] = None

    def nbytes(self, shape: tuple) -> int:
        return int(np.prod(shape)) * self.dtype.itemsize

    def free(self) -> None:
        for buffer in (self.host, self.device, self.allocator):
            if buffer is not None:
                buffer.free()


class OutputAllocator:
    """Device memory for one output of data-dependent shape, handed to TensorRT through a subclass of
    ``trt.IOutputAllocator`` (:meth:`attach`): TensorRT calls ``reallocate_output`` (8.6) or
    ``reallocate_output_async`` (10.x and later) with the size it needs once it knows it, then ``notify_shape``.
    Both calls happen inside execute_async_v3; the memory only grows and is reused between inferences."""

    def __init__(self, name: str, api: cuda.CudaApi) -> None:
        self.name, self.api = name, api
        self.buffer: Optional[cuda.DeviceBuffer] = None
        self.shape: Optional[tuple] = None
        self.error: Optional[BaseException] = None  # raised after execute: TensorRT cannot carry it

    def reallocate(self, size: int) -> int:
        try:
            if self.buffer is None or self.buffer.nbytes < size:
                if self.buffer is not None:
                    self.buffer.free()
                    self.buffer = None
                self.buffer = cuda.DeviceBuffer(size, api=self.api)
            return self.buffer.address
        except BaseException as exc:  # a null pointer makes TensorRT fail the enqueue
            self.error = exc
            return 0

    def attach(self, trt, context) -> None:
        """Register with ``context`` as the allocator of this output."""
        owner = self

        class _Allocator(trt.IOutputAllocator):
            def __init__(self):
                trt.IOutputAllocator.__init__(self)

            def reallocate_output(self, tensor_name, memory, size, alignment):
                return owner.reallocate(size)

            def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
                return owner.reallocate(size)

            def notify_shape(self, tensor_name, shape):
                owner.shape = tuple(shape)

        self.binding = _Allocator()  # TensorRT keeps a raw pointer: the Python object must outlive the context
        if not context.set_output_allocator(self.name, self.binding):
            raise RunError(f"TensorRT refused an output allocator for '{self.name}'")

    def free(self) -> None:
        if self.buffer is not None:
            self.buffer.free()
            self.buffer = None


class TensorRTRunner(Runner):
    """Runs a serialized engine through :mod:`effedge.runtime.cuda`: page-locked host and device buffers
    sized for the largest shapes, copies of only the bytes the current shapes need, set_tensor_address +
    execute_async_v3 on one stream, set_input_shape for a dynamic batch, an output allocator for outputs of
    data-dependent shape (``--nms onnx``), and optionally a CUDA graph, re-captured when the input shapes
    change. Everything lives in GPU 0's primary CUDA context, current from before deserializing until
    deactivation (:class:`effedge.runtime.cuda.PrimaryContext`).

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
        self.cuda_context: Optional[cuda.PrimaryContext] = None
        self._graph: Optional[cuda.CudaGraph] = None
        self._input_shapes: dict[str, tuple] = {}
        self._output_shapes: dict[str, Optional[tuple]] = {}  # None: data-dependent, known after the enqueue

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
        entry = engine_entry(self.manifest, self.engine_path)
        check_engine_compatible(entry, trt, device.compute_capability, gpu_name=device.name)
        data = self.engine_path.read_bytes()
        self.trt, self.cuda_api, self.caps = trt, api, capabilities_of(trt)
        self.logger = trt.Logger(trt.Logger.WARNING)
        # Full TensorRT keeps its bundled plugins (EfficientNMS, ...) in a library that must be registered
        # before an engine using them is deserialized; TensorRT-RTX has none.
        if self.caps.plugins and not trt.init_libnvinfer_plugins(self.logger, ""):
            raise RunError(f"{self.caps.name} could not register its plugin library (libnvinfer_plugin); "
                               "reinstall TensorRT")
        version_compatible = bool(((entry or {}).get("options") or {}).get("version_compatible"))
        if version_compatible and not self.caps.version_compatibility:
            raise EffedgeError(f"{self.engine_path.name} was built --version-compatible, which {self.caps.name} "
                               "cannot run (TensorRT 8.6 or newer can); rebuild it here (effedge build)")
        try:
            # The engine belongs to the CUDA context current when it is deserialized: make it the one the buffers,
            # the stream and the execution context are made in.
            self.cuda_context = cuda.PrimaryContext(0, api=api).enter()
            self.runtime = trt.Runtime(self.logger)
            if version_compatible:  # such a plan carries the runtime that runs it: TensorRT must be allowed to load it
                self.runtime.engine_host_code_allowed = True
            self._check_plan(data)
            start = time.perf_counter()
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise EffedgeError(f"{self.engine_path} is not a {self.caps.name} engine (corrupt, truncated or built "
                                   "by another version); rebuild it with effedge build")
            self.startup["deserialize_seconds"] = time.perf_counter() - start
            self.stream = cuda.Stream(api=api)
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
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        dynamic_inputs = any(-1 in tuple(self.engine.get_tensor_shape(n)) for n in inputs)
        for name in names:
            is_input = name in inputs
            dtype = numpy_dtype(self.engine.get_tensor_dtype(name))
            declared = tuple(self.engine.get_tensor_shape(name))
            if is_input and -1 in declared:
                max_shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # the profile's max shape
            elif -1 in declared and dynamic_inputs:  # follows the batch (or is data-dependent: see _set_shapes)
                max_shape = tuple(self._max_output_shape(inputs, declared))
            elif -1 in declared:  # static inputs: the shape depends on the data (the NMS layer's outputs)
                self.tensors[name] = IoTensor(name, False, dtype, declared, None, None, None,
                                              self._output_allocator(name, dtype))
                continue
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

    def _output_allocator(self, name: str, dtype: np.dtype) -> OutputAllocator:
        if not self.caps.output_allocator:
            raise EffedgeError(f"output '{name}' of {self.engine_path.name} has a data-dependent shape, which "
                               f"{self.caps.name} cannot run (no IOutputAllocator); recompile with the same options and "
                               "`effedge compile --nms efficientnms`")
        allocator = OutputAllocator(name, self.cuda_api)
        allocator.attach(self.trt, self.context)
        return allocator

    def _max_output_shape(self, inputs: list[str], shape: tuple) -> tuple:
        """Output buffers for a dynamic batch are sized for the optimization profile's largest batch."""
        batch = max(self.engine.get_tensor_profile_shape(n, 0)[2][0] for n in inputs)
        return tuple(batch if d == -1 else d for d in shape)

    def deactivate(self) -> None:
        self._destroy_graph()
        if self.stream is not None:  # nothing may still be reading or writing the buffers about to be freed
            self.stream.synchronize()
        self.context = self.engine = self.runtime = None
        for tensor in self.tensors.values():
            tensor.free()
        self.tensors = {}
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.cuda_context is not None:
            self.cuda_context.exit()
            self.cuda_context = None
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
        outputs = {}
        for name, tensor in self.tensors.items():
            if tensor.is_input:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            if -1 in shape:  # data-dependent: TensorRT allocates through the allocator and reports the shape
                if tensor.allocator is None:
                    tensor.allocator = self._output_allocator(name, tensor.dtype)
                shape = None
            outputs[name] = shape
        if self.cuda_graph and None in outputs.values():
            raise EffedgeError(f"{self.name}: outputs of data-dependent shape (the NMS layer's) cannot be captured in "
                               "a CUDA graph; drop --cuda-graph")
        self._input_shapes, self._output_shapes = shapes, outputs

    def copy_inputs_async(self) -> None:
        """Host-to-device copies of the current inputs' bytes (not the whole buffers) on the stream."""
        for name, shape in self._input_shapes.items():
            tensor = self.tensors[name]
            cuda.copy_htod_async(tensor.device, tensor.host.array, tensor.nbytes(shape), self.stream)

    def copy_outputs_async(self) -> None:
        """Device-to-host copies of the current outputs' bytes on the stream (after :meth:`enqueue`: outputs of
        data-dependent shape are sized by then)."""
        for name in self._output_shapes:
            tensor = self.tensors[name]
            shape = self._output_shape(name)
            if tensor.allocator is not None and tensor.allocator.buffer is None:
                continue  # TensorRT asked for no memory: nothing to copy
            device = tensor.device if tensor.allocator is None else tensor.allocator.buffer
            if tensor.host is None or tensor.host.nbytes < tensor.nbytes(shape):  # a data-dependent output grew
                if tensor.host is not None:
                    tensor.host.free()
                tensor.host = cuda.PinnedBuffer(int(np.prod(shape)), tensor.dtype, api=self.cuda_api)
            cuda.copy_dtoh_async(tensor.host.array, device, tensor.nbytes(shape), self.stream)

    def _output_shape(self, name: str) -> tuple:
        shape = self._output_shapes[name]
        if shape is None:
            shape = self.tensors[name].allocator.shape
            if shape is None:
                raise RunError(f"{self.caps.name} did not report the shape of output '{name}' (see its log above)")
        return shape

    def outputs(self) -> dict[str, np.ndarray]:
        """Copies of the outputs in the host buffers (after copy_outputs_async and a stream synchronize)."""
        results = {}
        for name in self._output_shapes:
            shape, tensor = self._output_shape(name), self.tensors[name]
            if tensor.host is None:  # an empty data-dependent output
                results[name] = np.zeros(shape, tensor.dtype)
            else:
                results[name] = tensor.host.array[: int(np.prod(shape))].reshape(shape).copy()
        return results

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
        ok = self.context.execute_async_v3(self.stream.handle)
        for tensor in self.tensors.values():
            if tensor.allocator is not None and tensor.allocator.error is not None:
                error, tensor.allocator.error = tensor.allocator.error, None
                raise error
        if not ok:
            raise RunError(f"TensorRT execute_async_v3 failed{when} (see the TensorRT log above)")

    def _destroy_graph(self) -> None:
        if self._graph is not None:
            self._graph.destroy()
            self._graph = None
