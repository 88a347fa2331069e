"""The engine's layer report: layer count and reformat layers, from TensorRT's engine inspector.

The inspector is read from a deserialized engine (JSON) where this machine can deserialize it; an engine built
ahead of time (TensorRT-RTX on a machine without a supported GPU) cannot be, and then the same report is taken
from the builder's log, where the builder prints the inspector's layer list at DETAILED profiling verbosity.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Iterable

_LOG_LAYER = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*),")


def _is_reformat(name: str, layer_type: str) -> bool:
    return layer_type.lower() == "reformat" or "reformat" in name.lower()


def _summary(layers: list[tuple[str, str]], source: str) -> dict:
    return {
        "source": source,
        "layers": len(layers),
        "reformat_layers": sum(_is_reformat(name, kind) for name, kind in layers),
        "reformat_names": [name for name, kind in layers if _is_reformat(name, kind)][:50],
        "by_type": dict(Counter(kind for _, kind in layers).most_common()),
    }


def from_inspector_json(text: str) -> dict:
    """Summary of ``IEngineInspector.get_engine_information(JSON)`` output (DETAILED or LAYER_NAMES_ONLY)."""
    data = json.loads(text)
    layers = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # LAYER_NAMES_ONLY: names only
            layers.append((layer, "Reformat" if "reformat" in layer.lower() else "unknown"))
        else:
            layers.append((str(layer.get("Name", "")), str(layer.get("LayerType", "unknown"))))
    return _summary(layers, "engine inspector")


def from_build_log(lines: Iterable[str]) -> dict | None:
    """Summary of the "Layers:" block the builder logs at DETAILED verbosity; None when the log has none."""
    layers, inside = [], False
    for line in "\n".join(lines).splitlines():  # the block arrives as one multi-line log message
        text = line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line
        if text.strip() == "Layers:":
            layers, inside = [], True
            continue
        if inside:
            match = _LOG_LAYER.match(text)
            if match:
                layers.append((match.group("name"), match.group("type")))
            elif layers:
                inside = False
    return _summary(layers, "engine inspector, as logged by the builder") if layers else None
