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


def ort_session(model_or_path, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """A quiet ONNX Runtime session on a ModelProto or a file, with :data:`ORT_QDQ_FP16_FIX` applied."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(source, options, providers=list(providers), disabled_optimizers=list(ORT_QDQ_FP16_FIX))


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

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feed))))
