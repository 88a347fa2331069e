"""A sweep's work: host jobs (one compiled model each) and cells (one model on one device), and their keys.

* A **host job** is one (model, precision, batch): export, simplify and precision in the graph, run once for
  every device through :func:`effedge.pipeline.compile.compile_model`'s content-hash cache. Its key covers the
  compile configuration, the calibration images (by content), effedge's code and the tool versions, so the
  ledger entry ``fleet/host/<key>.json`` says which artefact (by sha256) it produced.
* A **cell** is one host job on one device. Its result is cached as ``fleet/results/<key>.json`` under the
  key (artefact sha256, device, backend, bench settings, and the fingerprint of the device's software and
  power mode that its device stage reports): a re-run executes only the cells without one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Union

from effedge.cache import mark_used
from effedge.io import write_json
from effedge.bench.harness import BenchSettings, settings_dict
from effedge.fleet.spec import DeviceSpec, SweepSpec

SWEEP_NMS = "none"  # the NMS tail of every sweep graph: one graph runs on every device (no plugin, no NMS layer)


def _digest(material: object) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def fleet_dir() -> Path:
    """The fleet's part of the effedge cache (``EFFEDGE_CACHE_DIR``) on the machine that calls it."""
    from effedge.quantize.precision import cache_root

    return cache_root() / "fleet"


@dataclass(frozen=True)
class HostJob:
    variant: Union[str, float]
    precision: str
    batch: int
    image_size: Optional[int] = None
    calib_dir: Optional[str] = None
    calib_images: int = 300

    @property
    def label(self) -> str:
        from effedge.arch.scaling import resolve

        size = f"@{self.image_size}" if self.image_size else ""
        return f"{resolve(self.variant).name}{size} {self.precision} b{self.batch}"

    def compile_config(self):
        from effedge.pipeline.compile import CompileConfig

        calibrated = self.precision in ("int8", "mixed")
        # One graph for every device: no NMS tail (raw boxes and scores, as `effedge bench` measures), and
        # built for ONNX Runtime, whose deployable is the precision graph itself; engines are built later on
        # each device from that graph.
        return CompileConfig(variant=self.variant, precision=self.precision, batch=self.batch,
                             image_size=self.image_size, nms=SWEEP_NMS, backend="onnxruntime",
                             calib_dir=self.calib_dir if calibrated else None,
                             calib_images=self.calib_images if calibrated else 300)

    def key(self) -> str:
        """What determines the artefact: the compile configuration, the calibration images by content,
        effedge's code and the versions of the tools that export and convert."""
        from effedge.provenance import cache_identity

        calib = None
        if self.precision in ("int8", "mixed"):
            from effedge.quantize.images import DEFAULT_CALIB_DIR, ImageSet

            calib = ImageSet.from_folder(self.calib_dir or DEFAULT_CALIB_DIR, count=self.calib_images).content_hash()
        return _digest({"config": asdict(self.compile_config()), "calib": calib,
                        "tools": cache_identity("torch", "onnx", "onnxsim", "onnxruntime", "nvidia-modelopt")})


@dataclass(frozen=True)
class Cell:
    job: HostJob
    device: DeviceSpec

    @property
    def id(self) -> str:
        return f"{self.job.label} @ {self.device.name}"

    @property
    def slug(self) -> str:
        """A file-name-safe id, stable across runs."""
        return _digest([asdict(self.job), self.device.name])[:20]


def bench_settings_for(spec: SweepSpec, job: HostJob) -> BenchSettings:
    return replace(spec.bench, batch=job.batch)


def result_key(artefact_sha256: str, device: DeviceSpec, settings: BenchSettings, fingerprint: dict) -> str:
    """A measurement's key: what was measured, where, how, and under which software (``fingerprint``, from
    :func:`effedge.fleet.device.device_fingerprint` on the device)."""
    return _digest({"artefact": artefact_sha256, "device": device.name, "backend": device.backend,
                    "bench": settings_dict(settings), "fingerprint": fingerprint})


def make_plan(spec: SweepSpec) -> tuple[list[HostJob], list[Cell]]:
    """Host jobs in model, batch, precision order; cells in the same order, every device per job."""
    jobs = [HostJob(variant, precision, batch, spec.image_size, spec.calib_dir, spec.calib_images)
            for variant in spec.models for batch in spec.batches for precision in spec.precisions]
    return jobs, [Cell(job, device) for job in jobs for device in spec.devices]


class FleetCache:
    """The driver's ledger of host artefacts and its results cache (JSON files, written atomically)."""

    def __init__(self, root: Optional[Path] = None):
        self.root = root or fleet_dir()

    def _read(self, path: Path) -> Optional[dict]:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # absent, or damaged by hand: recomputed
            return None
        mark_used(path)
        return data

    def artefact(self, host_key: str) -> Optional[dict]:
        return self._read(self.root / "host" / f"{host_key}.json")

    def record_artefact(self, host_key: str, meta: dict) -> None:
        (self.root / "host").mkdir(parents=True, exist_ok=True)
        write_json(self.root / "host" / f"{host_key}.json", meta)

    def result(self, key: str) -> Optional[dict]:
        result = self._read(self.root / "results" / f"{key}.json")
        return result if result and result.get("result_key") == key else None

    def record_result(self, result: dict) -> None:
        (self.root / "results").mkdir(parents=True, exist_ok=True)
        write_json(self.root / "results" / f"{result['result_key']}.json", result)
