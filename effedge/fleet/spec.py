"""SWEEP.yaml: the models, precisions, batches and devices of a fleet sweep, validated strictly.

::

    models: [d0, b0, 1.5]          # named variants or φ values
    image_size: 128                # optional: every model at this input size (default: each model's own;
                                   # `effedge sweep --imgsz N` overrides it)
    precisions: [fp32, fp16]       # fp32 | fp16 | int8 | mixed
    batches: [1, 4]                # static batch of each compiled model
    calibration: {dir: calib, images: 64}         # int8 / mixed (default: the shipped calibration set)
    bench: {warmup_s: 1, min_iterations: 20, min_duration_s: 3, cuda_graph: false, transfers: true, energy: true}
    devices:
      - orin-nx-16gb                                # a profile name: the Ray resource has the same name
      - {name: cpu-a, profile: cpu-local}           # a name of its own, measured against a profile
      - {name: rtx-box, profile: ./my-rtx.yaml, backend: tensorrt}   # backend: the profile's unless given
    faults: {retries: 2, device_wait_s: 120, max_consecutive_failures: 3}

Paths (calibration folder, profile files) are relative to the SWEEP.yaml. Every error names the file, the
field and the reason, in one line.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

from effedge.bench.harness import BenchSettings
from effedge.errors import EffedgeError

PRECISIONS = ("fp32", "fp16", "int8", "mixed")
DEVICE_BACKENDS = ("onnxruntime", "tensorrt")
# Names Ray gives its own resources: a device may not take one of them
RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory", "accelerator_type")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOP_KEYS = ("models", "image_size", "precisions", "batches", "calibration", "bench", "devices", "faults")
_BENCH_KEYS = {"warmup_s": float, "min_iterations": int, "min_duration_s": float, "cuda_graph": bool,
               "transfers": bool, "energy": bool}
_FAULT_KEYS = {"retries": int, "device_wait_s": float, "max_consecutive_failures": int}


class SweepSpecError(EffedgeError):
    pass


@dataclass(frozen=True)
class DeviceSpec:
    name: str  # the Ray custom resource of the node that holds the device
    profile: str  # a profile name, or the absolute path of a profile file
    backend: str  # onnxruntime | tensorrt


@dataclass(frozen=True)
class FaultPolicy:
    retries: int = 2  # re-runs of a task whose worker or node died (Ray's max_retries)
    device_wait_s: float = 120.0  # a device absent from the cluster this long has its open cells failed
    max_consecutive_failures: int = 3  # a device failing this many cells in a row is given up


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    models: tuple[Union[str, float], ...]
    precisions: tuple[str, ...]
    batches: tuple[int, ...]
    devices: tuple[DeviceSpec, ...]
    image_size: Optional[int] = None
    calib_dir: Optional[str] = None
    calib_images: int = 300
    bench: BenchSettings = field(default_factory=BenchSettings)
    faults: FaultPolicy = field(default_factory=FaultPolicy)

    def device(self, name: str) -> DeviceSpec:
        return next(d for d in self.devices if d.name == name)


def _fail(path: Path, where: str, reason: str) -> None:
    raise SweepSpecError(f"{path}: {where}: {reason}")


def _check_keys(path: Path, where: str, data: dict, allowed) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; allowed: {', '.join(allowed)}"
            _fail(path, f"{where}.{key}" if where else str(key), f"unknown key{hint}")


def _number(path: Path, where: str, value: Any, kind: type, minimum: float) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            _fail(path, where, f"expected true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        _fail(path, where, f"expected {'a whole number' if kind is int else 'a number'}, got {value!r}")
    if value < minimum:
        _fail(path, where, f"must be at least {minimum:g}, got {value}")
    return kind(value)


def _list(path: Path, where: str, value: Any) -> list:
    if not isinstance(value, list) or not value:
        _fail(path, where, f"expected a non-empty list, got {value!r}")
    if len(set(map(repr, value))) != len(value):
        _fail(path, where, "lists an entry twice")
    return value


def _models(path: Path, raw: Any, image_size: Optional[int],
            size_field: str = "image_size") -> tuple[Union[str, float], ...]:
    from effedge.arch.scaling import EfficientDetSpec, resolve

    models, names = [], {}
    for index, value in enumerate(_list(path, "models", raw)):
        where = f"models[{index}]"
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            _fail(path, where, f"expected a variant name (d0, b0, …) or a φ value, got {value!r}")
        try:
            spec = resolve(value)
        except EffedgeError as exc:
            _fail(path, where, str(exc))
        if spec.name in names:
            _fail(path, where, f"{value!r} is the same model as models[{names[spec.name]}]")
        names[spec.name] = index
        stride = spec.size_multiple if isinstance(spec, EfficientDetSpec) else None
        if image_size is not None and stride and image_size % stride:
            _fail(path, size_field, f"{image_size} is not a multiple of {stride}, the largest feature stride "
                                      f"of {spec.name}; use e.g. {max(stride, image_size // stride * stride)}")
        models.append(float(value) if isinstance(value, (int, float)) else value)
    return tuple(models)


def _profile_reference(path: Path, value: str) -> str:
    """A profile name stays a name; a file reference becomes absolute (relative to the SWEEP.yaml)."""
    if value.endswith((".yaml", ".yml")) or "/" in value:
        return str((path.parent / value).resolve())
    return value


def _devices(path: Path, raw: Any) -> tuple[DeviceSpec, ...]:
    from effedge.plan.profiles import load_profile

    devices = []
    for index, entry in enumerate(_list(path, "devices", raw)):
        where = f"devices[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry, "profile": entry}
        if not isinstance(entry, dict):
            _fail(path, where, "expected a profile name or a mapping with name, profile and optionally backend")
        _check_keys(path, where, entry, ("name", "profile", "backend"))
        name = entry.get("name")
        if not isinstance(name, str) or not _DEVICE_NAME.match(name):
            _fail(path, f"{where}.name", f"expected a name of letters, digits, '.', '_' or '-' (it becomes a Ray "
                                         f"resource), got {name!r}")
        if name in RESERVED_RESOURCES or name.startswith("node:"):
            _fail(path, f"{where}.name", f"{name!r} is one of Ray's own resources; choose another device name")
        if any(d.name == name for d in devices):
            _fail(path, f"{where}.name", f"device {name!r} is listed twice")
        profile_value = entry.get("profile", name)
        if not isinstance(profile_value, str):
            _fail(path, f"{where}.profile", f"expected a profile name or file, got {profile_value!r}")
        reference = _profile_reference(path, profile_value)
        try:
            profile = load_profile(reference)
        except EffedgeError as exc:
            _fail(path, f"{where}.profile", str(exc))
        backend = entry.get("backend", profile.software.backend)
        if backend not in DEVICE_BACKENDS:
            _fail(path, f"{where}.backend", f"{backend!r} is not one of {', '.join(DEVICE_BACKENDS)}")
        devices.append(DeviceSpec(name, reference, backend))
    return tuple(devices)


def _section(path: Path, data: dict, name: str, keys: dict) -> dict:
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        _fail(path, name, f"expected a mapping of {', '.join(keys)}")
    _check_keys(path, name, raw, keys)
    minimum = {"min_iterations": 1, "max_consecutive_failures": 1}
    return {key: _number(path, f"{name}.{key}", value, keys[key], minimum.get(key, 0)) for key, value in raw.items()}


def with_image_size(spec: SweepSpec, image_size: int) -> SweepSpec:
    """``spec`` with every model at ``image_size`` instead of the file's ``image_size`` (``sweep --imgsz``)."""
    _models(spec.path, list(spec.models), image_size, size_field="--imgsz")  # a multiple of every model's stride
    return replace(spec, image_size=image_size)


def load_sweep(sweep_file: Union[str, Path]) -> SweepSpec:
    """Read and validate SWEEP.yaml (profiles loaded, so a typo fails here and not on a device)."""
    import yaml

    path = Path(sweep_file)
    if not path.is_file():
        raise SweepSpecError(f"sweep file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise SweepSpecError(f"{path}: expected a mapping with models, precisions, batches and devices")
    _check_keys(path, "", data, _TOP_KEYS)
    for required in ("models", "precisions", "devices"):
        if required not in data:
            _fail(path, required, "missing")
    image_size = data.get("image_size")
    if image_size is not None:
        image_size = _number(path, "image_size", image_size, int, 1)
    precisions = _list(path, "precisions", data["precisions"])
    for index, precision in enumerate(precisions):
        if precision not in PRECISIONS:
            _fail(path, f"precisions[{index}]", f"{precision!r} is not one of {', '.join(PRECISIONS)}")
    batches = [_number(path, f"batches[{i}]", b, int, 1) for i, b in enumerate(_list(path, "batches",
                                                                                       data.get("batches", [1])))]
    calibration = data.get("calibration", {})
    if not isinstance(calibration, dict):
        _fail(path, "calibration", "expected a mapping of dir and images")
    _check_keys(path, "calibration", calibration, ("dir", "images"))
    calib_dir = calibration.get("dir")
    if calib_dir is not None:
        if not isinstance(calib_dir, str):
            _fail(path, "calibration.dir", f"expected a folder of images, got {calib_dir!r}")
        calib_dir = str((path.parent / calib_dir).resolve())
        if not Path(calib_dir).is_dir():
            _fail(path, "calibration.dir", f"folder {calib_dir} not found")
    calib_images = _number(path, "calibration.images", calibration.get("images", 300), int, 1)
    return SweepSpec(
        path=path, models=_models(path, data["models"], image_size), precisions=tuple(precisions),
        batches=tuple(batches), devices=_devices(path, data["devices"]), image_size=image_size,
        calib_dir=calib_dir, calib_images=calib_images,
        bench=BenchSettings(**_section(path, data, "bench", _BENCH_KEYS)),
        faults=FaultPolicy(**_section(path, data, "faults", _FAULT_KEYS)))
