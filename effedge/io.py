"""Artefacts appear whole or not at all: stages write into a staging folder and publish by rename."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from effedge.errors import EffedgeError


@contextlib.contextmanager
def output_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Create ``path`` if needed and prove it writable (or raise a one-line error); if the work inside fails,
    a directory this call created is removed again when still empty."""
    out = Path(path).expanduser()
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise EffedgeError(f"cannot write to output directory {out}: {exc.strerror or exc}; choose another "
                           "--out") from exc
    try:
        yield out
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A private folder inside ``out_dir`` for a stage's files; removed, with its contents, if the stage fails."""
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def private_tempdir() -> Iterator[Path]:
    """A temp folder that, while open, is also where libraries' own temp files go (ModelOpt's intermediate
    ``tmp*.onnx`` from ``mkstemp``), removed with all of it on any exit, Ctrl-C included. Sets the process-wide
    ``tempfile.tempdir``: for single-threaded stages only."""
    with tempfile.TemporaryDirectory(prefix="effedge-") as tmp:
        previous, tempfile.tempdir = tempfile.tempdir, tmp
        try:
            yield Path(tmp)
        finally:
            tempfile.tempdir = previous


def publish(stage: Path, out_dir: Path, names: list[str]) -> None:
    """Move finished files from the staging folder into ``out_dir`` (atomic per file, same filesystem)."""
    for name in names:
        os.replace(stage / name, out_dir / name)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` whole or not at all: a uniquely named temp file beside it (concurrent writers
    never share one), flushed to disk, then renamed over ``path``."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see :func:`atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


MANIFEST = "build.json"  # what a build directory holds and how it was made (effedge.provenance)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The build.json of ``out_dir``, or one line saying why there is none."""
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise EffedgeError(f"{path} not found: {out_dir} is not an effedge build directory") from exc
    except json.JSONDecodeError as exc:
        raise EffedgeError(f"{path} is not valid JSON ({exc.msg}); rebuild with --force") from exc


def cache_root() -> Path:
    """Where effedge caches what it can recompute (Q/DQ placement, calibration ranges, timing caches, graph
    costs): $EFFEDGE_CACHE_DIR, else $XDG_CACHE_HOME/effedge, else ~/.cache/effedge."""
    return Path(os.environ.get("EFFEDGE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "effedge")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
