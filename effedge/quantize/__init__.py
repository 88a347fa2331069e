"""The precision stage: fp16, int8 as explicit Q/DQ calibrated on images, and mixed int8/fp16, written into the
ONNX graph, with fidelity measured against fp32."""
from effedge.quantize.calibrators import CALIB_METHODS, DEFAULT_METHOD
from effedge.quantize.precision import PRECISIONS, PrecisionOptions, convert
from effedge.quantize.images import DEFAULT_CALIB_DIR, ImageSet

__all__ = ["CALIB_METHODS", "DEFAULT_CALIB_DIR", "DEFAULT_METHOD", "PRECISIONS", "ImageSet", "PrecisionOptions",
           "convert"]
