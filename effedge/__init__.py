"""effedge: an edge deployment compiler for EfficientNet / EfficientDet.

Heavy dependencies (torch) load on first use, so the runtime side imports on a device that has only
numpy + TensorRT.
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
__all__ = ["build_model", "shipped_data", "__version__"]


def shipped_data(name: str) -> Path:
    """The shipped ``calib`` or ``profiles`` folder: inside an installed wheel (effedge/data/NAME), else at the
    top of the source checkout (editable installs, the repository)."""
    installed = Path(__file__).resolve().parent / "data" / name
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / name


def __getattr__(name: str):
    if name == "build_model":
        from effedge.models import build_model

        return build_model
    raise AttributeError(f"module 'effedge' has no attribute {name!r}")
