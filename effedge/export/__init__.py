"""The export stage: PyTorch -> ONNX that TensorRT compiles well (the deployable wrapper defines the graph
contract), simplification with a parity check, graph passes and NMS tails."""
from effedge.export.nms_tail import NMS_TAILS, append_nms_tail
from effedge.export.onnx_export import (RAW_ONNX, SIMPLIFIED_ONNX, ExportOptions, deployable, example_input, export,
                                        output_names, torch_runner)
from effedge.export.simplify import check_parity, simplify_model

__all__ = ["NMS_TAILS", "RAW_ONNX", "SIMPLIFIED_ONNX", "ExportOptions", "append_nms_tail", "check_parity",
           "deployable", "example_input", "export", "output_names", "simplify_model", "torch_runner"]
