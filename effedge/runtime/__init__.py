"""Running compiled models: one runner contract for every backend (ONNX Runtime, TensorRT, TensorRT-RTX,
PyTorch), the CUDA layer, pre/post-processing and the Detector. Importing it needs only NumPy; each backend
imports its own module (onnxruntime, tensorrt, tensorrt_rtx, torch, cuda-python) when it is activated."""
from effedge.runtime.base import Runner, TensorInfo
from effedge.runtime.detector import Detections, Detector

__all__ = ["Detections", "Detector", "Runner", "TensorInfo"]
