"""Latency profiles: a device, its software, a latency target and the predictor's efficiency priors
(profiles/*.yaml), validated strictly; fitted models live in a user profile directory.

A profile file::

    device:   {name, kind: jetson|gpu|cpu, fp32_tflops, fp16_tflops, int8_tops, memory_bandwidth_gbs,
               dla_cores, compute_capability, sources: [...]}
    software: {backend: tensorrt|onnxruntime, jetpack, tensorrt}
    target:   {latency_ms, percentile: median|p90|p95|p99, batch, precision: fp32|fp16|int8|mixed,
               power_mode, margin, nms: none|onnx|efficientnms}   # nms: default what compile deploys
    priors:   {compute: {fp32, fp16, int8}, memory, overhead_us, source}    # optional: generic priors
    model:    {fits: {PRECISION: {...}}, measured: [...]}  # written by `effedge profile fit` / self-calibration

``effedge profile fit`` and self-calibration never touch the shipped files: they write a copy with the
``model`` section into the user profile directory (``$EFFEDGE_PROFILE_DIR``, else
``$XDG_CONFIG_HOME/effedge/profiles``, else ``~/.config/effedge/profiles``), which is searched first.

Every error names the file, the field and the fix, in one line.
"""
from __future__ import annotations

import difflib
import os
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from effedge import shipped_data
from effedge.errors import EffedgeError
from effedge.io import atomic_write

PROFILE_DIR = shipped_data("profiles")
PERCENTILES = ("median", "p90", "p95", "p99")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")


class ProfileError(EffedgeError):
    pass


def user_profile_dir() -> Path:
    """Where fitted and self-calibrated profiles are written (and looked up before the shipped ones)."""
    if os.environ.get("EFFEDGE_PROFILE_DIR"):
        return Path(os.environ["EFFEDGE_PROFILE_DIR"])
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "effedge" / "profiles"


def _number(unit: str, **bounds) -> Any:
    return Annotated[float, Field(strict=True, description=unit, **bounds)]


def _as_text(value: Any) -> Any:
    """6.1 and 8.7 written unquoted are versions, not numbers."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


Version = Annotated[str, BeforeValidator(_as_text)]
Precision = Literal["fp32", "fp16", "int8", "mixed"]
NmsTail = Literal["none", "onnx", "efficientnms"]
Teraflops = _number("TFLOPS", gt=0)
Teraops = _number("TOPS", gt=0)
Bandwidth = _number("GB/s", gt=0)
Milliseconds = _number("milliseconds")
PositiveMilliseconds = _number("milliseconds", gt=0)
Microseconds = _number("microseconds per layer", ge=0)
Fraction = _number("a fraction in (0, 1]", gt=0, le=1)
Margin = _number("a fraction in [0, 1)", ge=0, lt=1)
Weight = _number("a weight", ge=0)
Ratio = _number("a ratio", gt=0)
RelativeError = _number("a fraction", ge=0)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Device(_Section):
    name: str
    kind: Literal["jetson", "gpu", "cpu"]
    fp32_tflops: Teraflops
    fp16_tflops: Teraflops
    int8_tops: Teraops
    memory_bandwidth_gbs: Bandwidth
    dla_cores: Annotated[int, Field(strict=True, ge=0)] = 0
    compute_capability: Optional[Version] = None
    sources: list[str]

    def peak_ops(self, precision: str) -> float:
        """Peak multiply-add throughput in MAC/s for a precision (mixed: its int8 part dominates)."""
        tflops = {"fp32": self.fp32_tflops, "fp16": self.fp16_tflops, "int8": self.int8_tops,
                  "mixed": self.int8_tops}[precision]
        return tflops * 1e12 / 2


class Software(_Section):
    backend: Literal["tensorrt", "onnxruntime"]
    jetpack: Optional[Version] = None
    tensorrt: Optional[Version] = None


class Target(_Section):
    latency_ms: Milliseconds
    percentile: Literal["median", "p90", "p95", "p99"] = "median"
    batch: Annotated[int, Field(strict=True, ge=1)] = 1
    precision: Precision = "fp16"
    power_mode: Optional[Version] = None
    margin: Margin = 0.1  # predicted latency must be ≤ (1 − margin) × budget
    nms: Optional[NmsTail] = None  # the NMS tail deployed (default: what compile picks on the backend)

    @field_validator("latency_ms")
    @classmethod
    def _positive_budget(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"the latency budget must be positive, got {value:g}")
        return value


class ComputeEfficiency(_Section):
    """Achieved ÷ peak MAC rate on dense convolutions, per precision (mixed uses int8's)."""
    fp32: Fraction
    fp16: Fraction
    int8: Fraction


class Priors(_Section):
    """The roofline's efficiency factors before any fit, and where they come from."""
    compute: ComputeEfficiency
    memory: Fraction
    overhead_us: Microseconds
    source: str

    def compute_for(self, precision: str) -> float:
        return getattr(self.compute, "int8" if precision == "mixed" else precision)


class Correction(_Section):
    """At a fitted point (placed by its prior roofline time), measured ÷ weighted roofline."""
    prior_ms: PositiveMilliseconds
    factor: Ratio


class Fit(_Section):
    """Weights on the prior roofline's compute-bound, memory-bound and overhead terms, and the corrections
    that make it reproduce the fitted points."""
    compute: Weight
    memory: Weight
    overhead: Weight
    corrections: list[Correction] = []
    method: Literal["fit", "self-calibration"]
    points: list[str]
    shape_error: RelativeError  # largest error of the weighted roofline alone on the points
    nms: Optional[NmsTail] = None  # the NMS tail of the measured graphs (None: not recorded, so never used)


class Measured(_Section):
    variant: Optional[str]
    precision: Precision
    batch: int = 1
    resolution: Optional[list[int]] = None
    latency_ms: PositiveMilliseconds
    nms: Optional[NmsTail] = None  # the measured graph's NMS tail (None: not recorded)


class FittedModel(_Section):
    fits: dict[Precision, Fit] = {}
    measured: list[Measured] = []


class ProfileFile(_Section):
    device: Device
    software: Software
    target: Target
    priors: Optional[Priors] = None
    model: FittedModel = FittedModel()


@dataclass
class Profile:
    name: str
    path: Path
    device: Device
    software: Software
    target: Target
    priors: Optional[Priors] = None
    fits: dict[str, Fit] = field(default_factory=dict)  # by precision
    measured: list[Measured] = field(default_factory=list)

    @property
    def nms(self) -> str:
        """The NMS tail this profile selects, verifies, fits and compiles for: ``target.nms``, else the one
        ``compile --nms auto`` deploys on the profile's backend."""
        from effedge.export.nms_tail import default_tail

        return self.target.nms or default_tail(self.software.backend)

    def fit_for(self, precision: str) -> Optional[Fit]:
        """The fit for ``precision``, if it was fitted to graphs with this profile's NMS tail."""
        fitted = self.fits.get(precision)
        return fitted if fitted is not None and fitted.nms == self.nms else None

    def measured_ms(self, variant: str, resolution: int, batch: int, precision: str) -> Optional[float]:
        """A measured latency that counts for this variant at this input size, batch, precision and the
        profile's NMS tail (the last one stored wins), else None."""
        return next((m.latency_ms for m in reversed(self.measured)
                     if (m.variant, m.resolution, m.batch, m.precision, m.nms)
                     == (variant, [resolution, resolution], batch, precision, self.nms)), None)

    @property
    def user_copy(self) -> bool:
        return self.path.parent.resolve() == user_profile_dir().resolve()


def _section_class(location: tuple) -> Optional[type]:
    """The schema class that holds the last key of ``location`` (dict keys, such as a precision, skipped)."""
    cls: Any = ProfileFile
    for part in location[:-1]:
        if cls is None:
            break
        if isinstance(part, int) or part not in cls.model_fields:  # a list index or a dict key
            continue
        annotation = cls.model_fields[part].annotation
        while typing.get_origin(annotation) in (typing.Union, dict, list):
            annotation = next(a for a in typing.get_args(annotation)[::-1] if a is not type(None))
        cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return cls


def _explain(error: dict) -> tuple[str, str]:
    """(field, reason with the fix) for one pydantic error, in this project's words."""
    location = tuple(part for part in error["loc"] if part != "[key]")  # pydantic marks a bad dict key so
    where = ".".join(str(part) for part in location)
    kind, value = error["type"], error.get("input")
    cls = _section_class(location)
    spec = cls.model_fields.get(location[-1]) if cls and isinstance(location[-1], str) else None
    if kind == "missing":
        return where, "missing section" if len(location) == 1 else "missing"
    if kind == "extra_forbidden":
        allowed = list(cls.model_fields) if cls else []
        close = difflib.get_close_matches(str(location[-1]), allowed, n=1)
        return where, "unknown key" + (f" (did you mean {close[0]}?)" if close else f"; allowed: {', '.join(allowed)}")
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing", "int_from_float"):
        unit = f" of {spec.description}" if spec is not None and spec.description else ""
        noun = "a whole number" if kind.startswith("int") else f"a number{unit}"
        return where, f"expected {noun}, got {value!r} (write the number without a unit)"
    if kind == "literal_error":
        return where, f"{value!r} is not one of {error['ctx']['expected']}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return where, f"expected a mapping, got {type(value).__name__}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return where, f"{error['msg'].replace('Input should be', 'must be')}, got {value!r}"
    if kind == "value_error":
        return where, str(error["ctx"]["error"])
    return where, error["msg"]


def parse(path: Path, data: Any) -> ProfileFile:
    """Validate profile data read from ``path``; the first problem becomes one ProfileError line."""
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping with device, software and target")
    try:
        return ProfileFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)  # a misspelt key first: "did you mean" explains the missing one
        where, reason = _explain(min(errors, key=lambda error: error["type"] != "extra_forbidden"))
        raise ProfileError(f"{path}: {where}: {reason}") from None


def _named(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))} if directory.is_dir() else {}


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A file given by path, else NAME from the user profile directory, else the shipped NAME."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ProfileError(f"profile {path} not found")
        return path
    available = {**_named(PROFILE_DIR), **_named(user_profile_dir())}
    if str(name_or_path) in available:
        return available[str(name_or_path)]
    close = difflib.get_close_matches(str(name_or_path), list(available), n=1)
    raise ProfileError(f"unknown profile {name_or_path!r}; " + (f"did you mean {close[0]}?" if close else
                                                                 f"available: {', '.join(sorted(available))}"))


def load_profile(name_or_path: str | Path) -> Profile:
    import yaml

    path = resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    parsed = parse(path, data)
    return Profile(name=path.stem, path=path, device=parsed.device, software=parsed.software, target=parsed.target,
                   priors=parsed.priors, fits=dict(parsed.model.fits), measured=list(parsed.model.measured))


def for_backend(profile: Profile, backend: str) -> Profile:
    """``profile`` as compiled for ``backend``: TensorRT-RTX has no native INT8 convolution (it converts Q/DQ
    convolutions to fp32), so an int8 or mixed target precision becomes fp16 there."""
    if backend == "tensorrt-rtx" and profile.target.precision in ("int8", "mixed"):
        return replace(profile, target=profile.target.model_copy(update={"precision": "fp16"}))
    return profile


def save_model(profile: Profile, fits: dict, measured: list) -> Path:
    """Write ``profile`` with these fits and measured points to the user profile directory (atomically;
    the shipped file is never touched). Returns the written path."""
    import yaml

    data = yaml.safe_load(profile.path.read_text())
    data["model"] = FittedModel(fits=fits, measured=measured).model_dump(mode="json")
    parse(profile.path, data)  # what is written must load again
    target = user_profile_dir() / f"{profile.name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# effedge latency profile {profile.name} with a model fitted on this machine (effedge profile fit or\n"
              f"# self-calibration). Delete this file to return to the shipped profile.\n")
    atomic_write(target, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return target


def all_profiles() -> list[Path]:
    """Shipped profiles."""
    return sorted(PROFILE_DIR.glob("*.yaml"))


def user_profiles() -> list[Path]:
    return sorted(user_profile_dir().glob("*.yaml")) if user_profile_dir().is_dir() else []
