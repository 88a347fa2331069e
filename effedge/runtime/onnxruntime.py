"""ONNX Runtime backend: CPU by default, CUDA / TensorRT execution providers when installed."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from effedge.runtime.base import Runner, TensorInfo
from effedge.errors import EffedgeError

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


# ONNX Runtime's WeightBiasQuantization optimizer gives wrong outputs for graphs holding both Q/DQ and fp16:
# every session effedge opens disables it.
ORT_QDQ_FP16_FIX = ("WeightBiasQuantization",)


def ort_session(model_or_path, providers: Sequence[str] = ("CPUExecutionProvider",), *,
                priority_order: bool = False, memory_patterns: bool = True):
    """A quiet ONNX Runtime session on a ModelProto or a file, with :data:`ORT_QDQ_FP16_FIX` applied.

    For graphs run to be measured rather than served (effedge's calibration and fidelity passes):
    ``priority_order`` runs the nodes in ONNX Runtime's priority-based order, which follows the graph's node
    order, instead of its default depth-first walk back from the outputs; ``memory_patterns=False`` drops the
    one pre-planned block per run. Measured at D7 (1536 px): the calibration graph 11.4 → 6.3 GB with both, for a
    forward about 15 % slower; the int8 graph 2.9 → 1.8 GB without memory patterns."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if priority_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.enable_mem_pattern = memory_patterns
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(source, options, providers=list(providers), disabled_optimizers=list(ORT_QDQ_FP16_FIX))


def check_no_tensorrt_plugins(model_path: Path) -> None:
    """Refuse, in one line, a graph holding TensorRT plugin nodes (EfficientNMS_TRT, the ``efficientnms`` NMS
    tail): ONNX Runtime would only say ``EfficientNMS_TRT(-1) is not a registered function/op``."""
    plugins = sorted(set(tensorrt_plugin_ops(model_path)))
    if not plugins:
        return
    from effedge.io import MANIFEST, read_manifest

    manifest = read_manifest(model_path.parent) if (model_path.parent / MANIFEST).is_file() else {}
    variant = manifest.get("variant", "<variant>")
    if plugins == ["EfficientNMS_TRT"]:
        tail_free = model_path.parent / "model.sim.onnx"
        # the tail-free graph beside it holds the same weights; a re-export must repeat the build's own options
        fix = (f"run {tail_free} instead (no tail: the Detector runs NMS in NumPy)" if tail_free.is_file() and tail_free != model_path else
               f"re-export with the same --weights/--imgsz/--num-classes and `effedge export --variant {variant} "
               "--nms onnx` (or --nms none)")
        raise EffedgeError(
            f"{model_path.name} ends in the EfficientNMS_TRT tail (--nms efficientnms), which only full TensorRT "
            "runs; ONNX Runtime runs the onnx tail (NonMaxSuppression, also TensorRT >= 8.5) or none (NMS in NumPy, "
            f"every backend): {fix}")
    raise EffedgeError(f"{model_path.name} holds TensorRT plugin nodes ({', '.join(plugins)}) that ONNX Runtime "
                       "cannot run; run it as a TensorRT engine (effedge build) or export it without them")


def tensorrt_plugin_ops(model_path: Path) -> list[str]:
    """Op types of the top-level graph's TensorRT plugin nodes (domain ``trt.plugins`` or a ``_TRT`` op type),
    read from the ONNX protobuf's wire format: the runtime side has ONNX Runtime but not the onnx package."""
    ops = []
    try:
        for number, graph in _message_fields(memoryview(Path(model_path).read_bytes())):
            if number != 7:  # ModelProto.graph
                continue
            for field, node in _message_fields(graph):
                if field != 1:  # GraphProto.node
                    continue
                strings = {k: bytes(v).decode("utf-8", "replace") for k, v in _message_fields(node) if k in (4, 7)}
                op_type, domain = strings.get(4, ""), strings.get(7, "")  # NodeProto.op_type, NodeProto.domain
                if domain == "trt.plugins" or op_type.endswith("_TRT"):
                    ops.append(op_type)
    except (IndexError, ValueError, TypeError):  # not a protobuf this reader follows: ONNX Runtime will say why
        return []
    return ops


def _message_fields(buffer: memoryview):
    """(field number, bytes) of each length-delimited field of one protobuf message; other wire types skipped."""
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        wire = key & 7
        if wire == 0:
            _, position = _varint(buffer, position)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, position = _varint(buffer, position)
            if position + length > len(buffer):
                raise ValueError("truncated field")
            yield key >> 3, buffer[position:position + length]
            position += length
        else:
            raise ValueError(f"protobuf wire type {wire}")


def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model_path: str | Path, *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None, disabled_optimizers: Sequence[str] = ORT_QDQ_FP16_FIX):
        super().__init__()
        self.model_path = Path(model_path)
        self.providers = list(providers)
        self.threads = threads
        self.disabled_optimizers = list(disabled_optimizers)
        self.session = None

    def activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        if "TensorrtExecutionProvider" not in self.providers:  # that provider runs TensorRT plugins itself
            check_no_tensorrt_plugins(self.model_path)
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=self.providers,
                                                disabled_optimizers=self.disabled_optimizers or None)
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid models
            raise EffedgeError(f"ONNX Runtime cannot load {self.model_path}: {str(exc).splitlines()[0]}") from exc

    def deactivate(self) -> None:
        self.session = None

    @staticmethod
    def _info(args) -> list[TensorInfo]:
        return [TensorInfo(a.name, tuple(a.shape), np.dtype(_ORT_TYPES.get(a.type, np.float32))) for a in args]

    def input_info(self) -> list[TensorInfo]:
        return self._info(self.session.get_inputs())

    def output_info(self) -> list[TensorInfo]:
        return self._info(self.session.get_outputs())

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feed))))
