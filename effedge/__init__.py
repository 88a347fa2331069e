"""effedge: an edge deployment compiler for EfficientNet / EfficientDet.

Heavy dependencies (torch) load on first use, so the runtime side imports on a device that has only
numpy + TensorRT.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["build_model", "__version__"]


def __getattr__(name: str):
    if name == "build_model":
        from effedge.models import build_model

        return build_model
    raise AttributeError(f"module 'effedge' has no attribute {name!r}")
