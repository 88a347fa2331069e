"""Cache entries (one file or folder each, of a known kind), build folders, and their removal."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from effedge.errors import EffedgeError
from effedge.io import MANIFEST, cache_root

REMOVING_PREFIX = ".removing-"  # an entry renamed aside for deletion: already gone for every reader


@dataclass(frozen=True)
class Kind:
    name: str
    folder: str  # relative to the cache root
    made_by: str
    holds: str = "any"  # "files" | "dirs" | "any": which children of the folder are entries of this kind
    depth: int = 1  # 2: the entries are the grandchildren (folder/<group>/<entry>)


# Every writer of effedge's cache, by where it writes (grep cache_root / fleet_dir when adding one).
KINDS: tuple[Kind, ...] = (
    Kind("placement", "placement", "Q/DQ placement by ModelOpt (int8, mixed)", "files"),
    Kind("calibration", "calibration", "int8 activation ranges (int8, mixed)", "files"),
    Kind("self-calibration", "calibration", "builds timed to fit a cpu-local profile (select)", "dirs"),
    Kind("timing-cache", "tensorrt", "TensorRT kernel timings (--backend tensorrt)", "files"),
    Kind("costs", "costs", "graph costs the planner extrapolates (select)"),
    Kind("fleet-build", "fleet/builds", "sweep host builds"),
    Kind("fleet-artefact", "fleet/artefacts", "graphs a sweep copied here (--fit)"),
    Kind("fleet-ledger", "fleet/host", "which graph each sweep job made"),
    Kind("fleet-result", "fleet/results", "sweep results per cell"),
    Kind("fleet-attempt", "fleet/attempts", "attempt logs of sweep runs"),
    Kind("fleet-device", "fleet/devices", "graphs and engines a sweep used per device", depth=2),
)
_TOP_FOLDERS = {kind.folder.split("/")[0] for kind in KINDS}
_FLEET_FOLDERS = {kind.folder.split("/")[1] for kind in KINDS if kind.folder.startswith("fleet/")}


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    bytes: int
    modified: float  # the newest modification time of the entry or anything inside it (seconds since the epoch)
    made_by: str
    state: Optional[str] = None  # build folders: "compiled" (build.json has a compile record) or "partial"

    def to_json(self, now: Optional[float] = None) -> dict:
        now = time.time() if now is None else now
        return {"kind": self.kind, "path": str(self.path), "name": self.path.name, "bytes": self.bytes,
                "modified": self.modified, "age_s": round(max(0.0, now - self.modified), 1),
                "made_by": self.made_by, **({"state": self.state} if self.state else {})}


@dataclass
class Listing:
    root: Path
    entries: list[Entry]
    others: list[Path] = field(default_factory=list)  # in the root but not effedge's: listed, never removed
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(entry.bytes for entry in self.entries)


@dataclass
class CleanReport:
    removed: list[Entry]
    kept: list[Entry]
    dry_run: bool
    errors: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(entry.bytes for entry in self.removed)


# --- reading ------------------------------------------------------------------------------------------------


def cache_source() -> str:
    """Which setting chose :func:`effedge.io.cache_root`."""
    if os.environ.get("EFFEDGE_CACHE_DIR"):
        return "$EFFEDGE_CACHE_DIR"
    return "$XDG_CACHE_HOME/effedge" if os.environ.get("XDG_CACHE_HOME") else "the default (~/.cache/effedge)"


def _size_and_modified(path: Path) -> tuple[int, float]:
    """Bytes and newest mtime of ``path`` and, for a real folder, everything under it; symlinks count as
    themselves (never followed)."""
    info = path.lstat()
    total, newest = info.st_size if not path.is_dir() or path.is_symlink() else 0, info.st_mtime
    if path.is_symlink() or not path.is_dir():
        return total, newest
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):  # removed while we look
                info = os.lstat(os.path.join(folder, name))
                newest = max(newest, info.st_mtime)
                if name in files or os.path.islink(os.path.join(folder, name)):
                    total += info.st_size
    return total, newest


def _build_state(path: Path) -> Optional[str]:
    """``compiled`` or ``partial`` for a folder holding an effedge build.json, else None."""
    manifest = path / MANIFEST
    if path.is_symlink() or manifest.is_symlink() or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # effedge writes it whole: not ours
        return None
    if not isinstance(data, dict) or "effedge_manifest" not in data:
        return None
    return "compiled" if isinstance(data.get("compile"), dict) and data["compile"].get("key") else "partial"


def _entry(kind: str, path: Path, made_by: str) -> Optional[Entry]:
    try:
        size, modified = _size_and_modified(path)
    except FileNotFoundError:
        return None
    return Entry(kind, path, size, modified, made_by, _build_state(path) if path.is_dir() else None)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` really lies under ``root`` (both resolved): no symlinked folder leads out."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _children(folder: Path) -> list[Path]:
    """Visible children (hidden ones are others' temp files being written, or ours being removed)."""
    try:
        return sorted(child for child in folder.iterdir() if not child.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_cache(root: Optional[Path] = None) -> Listing:
    """Every entry in the cache at ``root`` (default :func:`effedge.io.cache_root`), by kind."""
    root = Path(root) if root is not None else cache_root()
    listing = Listing(root, [])
    if not root.is_dir():
        return listing
    for kind in KINDS:
        folder = root / kind.folder
        if not folder.is_dir():
            continue
        if folder.is_symlink() or not _inside(folder, root):
            note = f"{folder} leads out of the cache (a symlink): not listed, never cleaned"
            if note not in listing.notes:
                listing.notes.append(note)
            continue
        groups = [folder] if kind.depth == 1 else [g for g in _children(folder) if g.is_dir() and not g.is_symlink()]
        for group in groups:
            for child in _children(group):
                is_dir = child.is_dir() and not child.is_symlink()
                if (kind.holds == "files" and is_dir) or (kind.holds == "dirs" and not is_dir):
                    continue
                entry = _entry(kind.name, child, kind.made_by)
                if entry is not None:
                    listing.entries.append(entry)
    listing.others = [child for child in _children(root) if child.name not in _TOP_FOLDERS]
    listing.others += [child for child in _children(root / "fleet") if child.name not in _FLEET_FOLDERS]
    return listing


def build_folders(runs: Path) -> list[Entry]:
    """The effedge build folders directly under ``runs`` (those holding an effedge build.json), with their state."""
    runs = Path(runs)
    entries = []
    for child in _children(runs):
        if child.is_dir() and not child.is_symlink() and _build_state(child):
            entry = _entry("build", child, "effedge compile / export")
            if entry is not None:
                entries.append(entry)
    return entries


def usage(root: Optional[Path] = None, runs: Optional[Path] = None) -> dict:
    """What ``effedge doctor`` reports: where the cache is, its size, and the size of the build folders."""
    listing = list_cache(root)
    report = {"cache": {"root": str(listing.root), "from": cache_source(), "bytes": listing.bytes,
                        "entries": len(listing.entries)}}
    if runs is not None:
        builds = build_folders(runs)
        report["runs"] = {"dir": str(runs), "bytes": sum(b.bytes for b in builds), "builds": len(builds)}
    return report


def mark_used(path: Path) -> None:
    """Record a cache hit on ``path`` (its mtime), so that ``clean --older-than`` keeps what is in use."""
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(path)


# --- durations and removal ------------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION_S = 3650 * 86400  # ten years: anything longer is a typo


def parse_duration(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w`` (also ``1.5h``, ``45s``) as seconds, or one line saying what is wrong."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text).lower())
    if not match:
        raise EffedgeError(f"{text!r} is not a duration; write a number and a unit (s, m, h, d, w), e.g. 30m, 12h, 7d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        raise EffedgeError(f"{text!r} is out of range: give more than 0 and at most {MAX_DURATION_S // 86400}d "
                           "(--all removes everything)")
    return seconds


def _remove(entry: Entry, root: Path) -> None:
    """Rename ``entry`` aside in its own folder (atomic), then delete it; a symlink is unlinked, not followed."""
    path = entry.path
    if path.resolve() == root.resolve() or not _inside(path.parent, root):
        raise EffedgeError(f"{path} is not inside {root}: not removed")
    aside = path.with_name(f"{REMOVING_PREFIX}{path.name}-{secrets.token_hex(4)}")
    os.rename(path, aside)
    _delete(aside)


def _delete(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)  # unlinks symlinks inside, never follows them


def _leftovers(root: Path, entries: Iterable[Entry]) -> list[Path]:
    """What an interrupted clean renamed aside but did not finish deleting, in ``root`` (a runs folder), the
    kinds' folders and the entries' own folders."""
    folders = {root, *(e.path.parent for e in entries)}
    for kind in KINDS:
        folders.add(root / kind.folder)
        if kind.depth == 2:
            folders.update(g for g in _children(root / kind.folder) if g.is_dir() and not g.is_symlink())
    found = []
    for folder in folders:
        if folder.is_symlink() or not _inside(folder, root):
            continue
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            found += [child for child in folder.iterdir() if child.name.startswith(REMOVING_PREFIX)]
    return found


def _refuse_a_shared_folder(root: Path) -> None:
    """A cache root mis-set to the home folder (or above it, or a filesystem root) holds the user's own folders,
    some named like cache kinds (``~/calibration``): never clean there."""
    resolved, home = root.expanduser().resolve(), Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or resolved in home.parents:
        where = "your home folder" if resolved == home else "a folder that holds your home folder, or a root"
        raise EffedgeError(f"refusing to clean {root}: it is {where}, not a cache of effedge's own; set "
                           "EFFEDGE_CACHE_DIR (or --runs) to a folder that only effedge uses")


def clean(entries: list[Entry], root: Path, *, older_than: Optional[float] = None, everything: bool = False,
          dry_run: bool = False, now: Optional[float] = None) -> CleanReport:
    """Remove the ``entries`` (from :func:`list_cache` or :func:`build_folders`, all under ``root``) last used
    more than ``older_than`` seconds ago, or all of them with ``everything``; ``dry_run`` removes nothing."""
    if (older_than is None) == (not everything):
        raise EffedgeError("give --older-than DURATION or --all (one of them)")
    _refuse_a_shared_folder(root)
    now = time.time() if now is None else now
    chosen = [e for e in entries if everything or now - e.modified > older_than]
    report = CleanReport([], [e for e in entries if e not in chosen], dry_run)
    if dry_run:
        report.removed = chosen
        return report
    for entry in chosen:
        try:
            _remove(entry, root)
            report.removed.append(entry)
        except FileNotFoundError:  # removed meanwhile by another clean
            continue
        except (OSError, EffedgeError) as exc:
            report.errors.append(f"{entry.path}: {getattr(exc, 'strerror', None) or exc}")
            report.kept.append(entry)
    for leftover in _leftovers(root, entries):
        with contextlib.suppress(OSError):
            _delete(leftover)
    return report
