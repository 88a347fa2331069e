"""Latency profiles: a device, its software, and a latency target (profiles/*.yaml), validated strictly.

A profile file::

    device:   {name, kind: jetson|gpu|cpu, fp32_tflops, fp16_tflops, int8_tops, memory_bandwidth_gbs,
               dla_cores, compute_capability, sources: [...]}
    software: {backend: tensorrt|onnxruntime, jetpack, tensorrt}
    target:   {latency_ms, percentile: median|p90|p95|p99, batch, precision: fp32|fp16|int8|mixed,
               power_mode, margin}
    model:    {efficiency: {...}, measured: [...]}      # written by `effedge profile fit`

Every error names the file, the field and the reason, in one line.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from effedge import shipped_data
from effedge.errors import EffedgeError

PROFILE_DIR = shipped_data("profiles")
PERCENTILES = ("median", "p90", "p95", "p99")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")


class ProfileError(EffedgeError):
    pass


@dataclass(frozen=True)
class Device:
    name: str
    kind: str
    fp32_tflops: float
    fp16_tflops: float
    int8_tops: float
    memory_bandwidth_gbs: float
    dla_cores: int = 0
    compute_capability: Optional[str] = None
    sources: tuple[str, ...] = ()

    def peak_ops(self, precision: str) -> float:
        """Peak multiply-add throughput in MAC/s for a precision (mixed: its int8 part dominates)."""
        tflops = {"fp32": self.fp32_tflops, "fp16": self.fp16_tflops, "int8": self.int8_tops,
                  "mixed": self.int8_tops}[precision]
        return tflops * 1e12 / 2


@dataclass(frozen=True)
class Software:
    backend: str
    jetpack: Optional[str] = None
    tensorrt: Optional[str] = None


@dataclass(frozen=True)
class Target:
    latency_ms: float
    percentile: str = "median"
    batch: int = 1
    precision: str = "fp16"
    power_mode: Optional[str] = None
    margin: float = 0.1  # predicted latency must be ≤ (1 − margin) × budget


@dataclass
class Profile:
    name: str
    path: Path
    device: Device
    software: Software
    target: Target
    efficiency: dict = field(default_factory=dict)
    measured: list = field(default_factory=list)


_SCHEMA: dict[str, dict[str, tuple]] = {
    # field: (type, required, unit/choices hint)
    "device": {"name": (str, True, None), "kind": (str, True, ("jetson", "gpu", "cpu")),
               "fp32_tflops": (float, True, "TFLOPS"), "fp16_tflops": (float, True, "TFLOPS"),
               "int8_tops": (float, True, "TOPS"), "memory_bandwidth_gbs": (float, True, "GB/s"),
               "dla_cores": (int, False, None), "compute_capability": (str, False, None),
               "sources": (list, True, None)},
    "software": {"backend": (str, True, ("tensorrt", "onnxruntime")), "jetpack": (str, False, None),
                 "tensorrt": (str, False, None)},
    "target": {"latency_ms": (float, True, "milliseconds"), "percentile": (str, False, PERCENTILES),
               "batch": (int, False, None), "precision": (str, False, PRECISIONS), "power_mode": (str, False, None),
               "margin": (float, False, None)},
    "model": {"efficiency": (dict, False, None), "measured": (list, False, None)},
}


def _fail(path: Path, where: str, reason: str) -> None:
    raise ProfileError(f"{path}: {where}: {reason}")


def _check_keys(path: Path, section: str, data: dict, allowed) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; allowed: {', '.join(allowed)}"
            _fail(path, f"{section}.{key}" if section else str(key), f"unknown key{hint}")


def _value(path: Path, section: str, key: str, value: Any, kind: type, hint) -> Any:
    where = f"{section}.{key}"
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            unit = f" of {hint}" if isinstance(hint, str) else ""
            _fail(path, where, f"expected a number{unit}, got {value!r} (write the number without a unit)")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, where, f"expected a whole number, got {value!r}")
        return value
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("jetpack", "tensorrt",
                                                                                        "compute_capability"):
            value = str(value)  # 6.1, 8.7 written unquoted
        if not isinstance(value, str):
            _fail(path, where, f"expected text, got {value!r}")
        if isinstance(hint, tuple) and value not in hint:
            _fail(path, where, f"{value!r} is not one of {', '.join(hint)}")
        return value
    if not isinstance(value, kind):
        _fail(path, where, f"expected a {kind.__name__}, got {type(value).__name__}")
    return value


def resolve_profile_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ProfileError(f"profile {path} not found")
        return path
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    raise ProfileError(f"unknown profile {name_or_path!r}; " + (f"did you mean {close[0]}?" if close else
                                                                 f"available: {', '.join(names)}"))


def load_profile(name_or_path: str | Path) -> Profile:
    import yaml

    path = resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping with device, software and target")
    _check_keys(path, "", data, _SCHEMA)
    sections = {}
    for section, fields in _SCHEMA.items():
        raw = data.get(section, {} if section == "model" else None)
        if raw is None:
            _fail(path, section, "missing section")
        if not isinstance(raw, dict):
            _fail(path, section, "expected a mapping")
        _check_keys(path, section, raw, fields)
        values = {}
        for key, (kind, required, hint) in fields.items():
            if key not in raw:
                if required:
                    _fail(path, f"{section}.{key}", "missing")
                continue
            values[key] = _value(path, section, key, raw[key], kind, hint)
        sections[section] = values
    device, target = sections["device"], sections["target"]
    for key in ("fp32_tflops", "fp16_tflops", "int8_tops", "memory_bandwidth_gbs"):
        if device[key] <= 0:
            _fail(path, f"device.{key}", f"must be positive, got {device[key]}")
    if target["latency_ms"] <= 0:
        _fail(path, "target.latency_ms", f"the latency budget must be positive, got {target['latency_ms']}")
    if not 0 <= target.get("margin", 0.1) < 1:
        _fail(path, "target.margin", "must be a fraction in [0, 1)")
    if target.get("batch", 1) < 1:
        _fail(path, "target.batch", "must be at least 1")
    if device.get("dla_cores", 0) < 0:
        _fail(path, "device.dla_cores", "must not be negative")
    return Profile(
        name=path.stem, path=path,
        device=Device(**{**device, "sources": tuple(device["sources"])}),
        software=Software(**sections["software"]), target=Target(**target),
        efficiency=dict(sections["model"].get("efficiency", {})),
        measured=list(sections["model"].get("measured", [])),
    )


def save_model(profile: Profile, efficiency: dict, measured: list) -> None:
    """Store fitted efficiency factors and measured points in the profile file (atomic rewrite)."""
    import yaml

    data = yaml.safe_load(profile.path.read_text())
    data["model"] = {"efficiency": efficiency, "measured": measured}
    tmp = profile.path.with_name(f".{profile.path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(profile.path)


def all_profiles() -> list[Path]:
    return sorted(PROFILE_DIR.glob("*.yaml"))
