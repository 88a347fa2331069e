"""The engine stage: one TensorRT capability table and the builders of TensorRT and TensorRT-RTX engines."""
from effedge.engine.builder import BuildOptions, GraphInfo, build_engine, check_nms
from effedge.engine.capabilities import Capabilities, capabilities, capabilities_of, import_trt

__all__ = ["BuildOptions", "Capabilities", "GraphInfo", "build_engine", "check_nms", "capabilities", "capabilities_of",
           "import_trt"]
