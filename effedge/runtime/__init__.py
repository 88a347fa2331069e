"""Running compiled models: one runner contract for every backend (ONNX Runtime, TensorRT, TensorRT-RTX,
PyTorch), the CUDA layer, pre/post-processing, the Detector and the Classifier. Importing it needs only NumPy; each backend
imports its own module (onnxruntime, tensorrt, tensorrt_rtx, torch, cuda-python) when it is activated."""
from effedge.runtime.base import Runner, TensorInfo
from effedge.runtime.classifier import Classifier, Prediction
from effedge.runtime.detector import Detections, Detector

__all__ = ["Classifier", "Detections", "Detector", "Prediction", "Runner", "TensorInfo"]
