"""effedge cache list | clean and doctor's disk report: every kind of entry with its size, removal by age or all,
only inside the cache root (symlinks never followed), whole entries only; and runs/ folder names."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from helpers import run_main as run_entry_point

DAY = 86400


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    return run_entry_point(monkeypatch, capsys, list(args))


def write(path: Path, size: int, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    age(path, age_days)
    return path


def age(path: Path, days: float) -> None:
    """Set the mtime of ``path`` and everything under it (not following symlinks) ``days`` back."""
    stamp = time.time() - days * DAY
    for item in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        os.utime(item, (stamp, stamp), follow_symlinks=False)


def build_folder(path: Path, compiled: bool, size: int, age_days: float = 0.0) -> Path:
    manifest = {"effedge_manifest": 1, "variant": "d0"}
    if compiled:
        manifest["compile"] = {"key": "ab" * 32, "deployable": "model.fp32.onnx"}
    write(path / "model.fp32.onnx", size)
    (path / "build.json").write_text(json.dumps(manifest))
    age(path, age_days)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache holding one entry of each kind, the sizes known; and a working directory without runs/."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(root))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    write(root / "placement" / "p1.onnx", 1000, age_days=10)
    write(root / "calibration" / "c1.json", 200, age_days=1)
    build_folder(root / "calibration" / "d0-fp32-b1", compiled=True, size=3000, age_days=30)
    write(root / "tensorrt" / "10.3.0-sm8.7.timing.cache", 400)
    write(root / "costs" / "d0-abc.json", 50, age_days=8)
    write(root / "fleet" / "host" / "k1.json", 10, age_days=9)
    write(root / "fleet" / "devices" / "orin" / "s1" / "model.onnx", 700)
    age(root / "fleet" / "devices" / "orin" / "s1", 20)
    return root


def listed(monkeypatch, capsys, *args) -> dict:
    code, out, err = run_main(monkeypatch, capsys, "cache", "list", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_list_shows_every_kind_with_its_size(cache, monkeypatch, capsys):
    report = listed(monkeypatch, capsys)
    assert report["root"] == str(cache) and report["from"] == "$EFFEDGE_CACHE_DIR"
    sizes = {(e["kind"], e["name"]): e["bytes"] for e in report["entries"]}
    assert sizes == {("placement", "p1.onnx"): 1000, ("calibration", "c1.json"): 200,
                     ("self-calibration", "d0-fp32-b1"): 3000 + len((cache / "calibration" / "d0-fp32-b1" /
                                                                     "build.json").read_bytes()),
                     ("timing-cache", "10.3.0-sm8.7.timing.cache"): 400, ("costs", "d0-abc.json"): 50,
                     ("fleet-ledger", "k1.json"): 10, ("fleet-device", "s1"): 700}
    assert report["bytes"] == sum(sizes.values())
    ages = {e["name"]: e["age_s"] / DAY for e in report["entries"]}
    assert 9.9 < ages["p1.onnx"] < 10.1 and ages["10.3.0-sm8.7.timing.cache"] < 0.01
    assert {e["name"]: e.get("state") for e in report["entries"]}["d0-fp32-b1"] == "compiled"

    code, out, _ = run_main(monkeypatch, capsys, "cache", "list")
    assert code == 0
    assert f"cache: {cache} (from $EFFEDGE_CACHE_DIR): {report['bytes'] / 1000:.1f} kB in 7 entries" in out
    assert any(line.split()[:2] == ["placement", "p1.onnx"] and "1.0 kB" in line and "10 d ago" in line
               for line in out.splitlines())


def test_clean_older_than_removes_only_entries_unused_that_long(cache, monkeypatch, capsys):
    # a folder counts as used when anything inside it changed: one fresh file keeps the whole build
    build = cache / "calibration" / "d0-fp32-b1"
    os.utime(build / "build.json")
    code, out, err = run_main(monkeypatch, capsys, "cache", "clean", "--older-than", "7d", "--json")
    assert code == 0, err
    removed = {Path(e["path"]).name for e in json.loads(out)["cache"]["removed"]}
    assert removed == {"p1.onnx", "d0-abc.json", "k1.json", "s1"}
    assert not (cache / "placement" / "p1.onnx").exists() and not (cache / "fleet" / "devices" / "orin" / "s1").exists()
    remaining = {e["name"] for e in listed(monkeypatch, capsys)["entries"]}
    assert remaining == {"c1.json", "d0-fp32-b1", "10.3.0-sm8.7.timing.cache"}
    assert (build / "model.fp32.onnx").is_file()

    code, out, _ = run_main(monkeypatch, capsys, "cache", "clean", "--older-than", "12h")
    assert code == 0 and "removed 1 entries (200 B), kept 2" in out  # c1.json, a day old


def test_dry_run_removes_nothing_and_all_empties(cache, monkeypatch, capsys):
    before = listed(monkeypatch, capsys)
    code, out, _ = run_main(monkeypatch, capsys, "cache", "clean", "--all", "--dry-run", "--json")
    report = json.loads(out)
    assert code == 0 and report["dry_run"] and len(report["cache"]["removed"]) == 7
    assert report["cache"]["freed_bytes"] == before["bytes"]
    assert listed(monkeypatch, capsys)["entries"] == before["entries"]

    code, out, _ = run_main(monkeypatch, capsys, "cache", "clean", "--all")
    assert code == 0 and "removed 7 entries" in out
    after = listed(monkeypatch, capsys)
    assert after["entries"] == [] and after["bytes"] == 0
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_clean_never_touches_anything_outside_the_root(cache, tmp_path, monkeypatch, capsys):
    outside = tmp_path / "outside"
    precious = write(outside / "precious.onnx", 123, age_days=100)
    write(outside / "tree" / "file.bin", 5, age_days=100)
    (cache / "placement" / "link.onnx").symlink_to(precious)  # an entry that is a symlink out
    inner = cache / "fleet" / "builds" / "d0-fp32-b1-0123"
    write(inner / "model.onnx", 9)
    (inner / "elsewhere").symlink_to(outside / "tree")  # a link inside an entry
    os.symlink(outside, cache / "fleet" / "results")  # a kind's whole folder leading out
    (cache / "notes.txt").write_text("mine")  # not effedge's
    age(cache, 100)

    report = listed(monkeypatch, capsys)
    names = {e["name"]: e["bytes"] for e in report["entries"]}
    assert names["link.onnx"] == len(str(precious))  # the link itself, not its target
    assert names["d0-fp32-b1-0123"] == 9 + len(str(outside / "tree"))
    assert "precious.onnx" not in names and str(cache / "notes.txt") in report["others"]
    assert any("fleet/results" in note and "symlink" in note for note in report["notes"])

    code, _, err = run_main(monkeypatch, capsys, "cache", "clean", "--all")
    assert code == 0, err
    assert precious.read_bytes() == b"x" * 123 and (outside / "tree" / "file.bin").is_file()
    assert (cache / "fleet" / "results").is_symlink() and (cache / "notes.txt").read_text() == "mine"
    assert not os.path.lexists(cache / "placement" / "link.onnx") and not inner.exists()


def test_an_entry_disappears_whole(cache, monkeypatch, capsys):
    """It is renamed aside before its files go, so a reader finds all of it or none; what an interrupted clean
    left aside is finished by the next one; others' temp files being written are not touched."""
    import shutil

    build = cache / "calibration" / "d0-fp32-b1"
    seen = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        seen.append((Path(path).name, build.exists(), sorted(p.name for p in Path(path).iterdir())))
        raise KeyboardInterrupt  # interrupted mid-removal

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        from effedge.cache import clean, list_cache

        listing = list_cache()
        clean([e for e in listing.entries if e.path == build], listing.root, everything=True)
    name, original_still_there, contents = seen[0]
    assert name.startswith(".removing-d0-fp32-b1-") and not original_still_there
    assert contents == ["build.json", "model.fp32.onnx"]
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert "d0-fp32-b1" not in {e["name"] for e in listed(monkeypatch, capsys)["entries"]}

    writing = write(cache / "placement" / ".p2.onnx.abc123.tmp", 10, age_days=30)  # atomic_write's temp file
    code, _, _ = run_main(monkeypatch, capsys, "cache", "clean", "--older-than", "1d")
    assert code == 0
    assert not list((cache / "calibration").glob(".removing-*")) and writing.is_file()


@pytest.mark.parametrize("args", [["--older-than", "7x"], ["--older-than", "7"], ["--older-than", "0m"],
                                  ["--older-than", "3651d"], [], ["--older-than", "7d", "--all"]])
def test_bad_selection_is_refused_in_one_line(cache, monkeypatch, capsys, args):
    code, out, err = run_main(monkeypatch, capsys, "cache", "clean", *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert ("--older-than" in err) and ("duration" in err or "range" in err or "--all" in err)
    assert len(listed(monkeypatch, capsys)["entries"]) == 7


def test_runs_build_folders_are_listed_and_cleaned_only_when_asked(cache, monkeypatch, capsys):
    runs = Path("runs")
    build_folder(runs / "d0-fp32-onnxruntime-1a2b3c4d", compiled=True, size=500, age_days=40)
    build_folder(runs / "d0-int8-onnxruntime-5e6f7a8b", compiled=False, size=300, age_days=40)
    build_folder(runs / "fresh-fp32-onnxruntime-9c0d1e2f", compiled=True, size=100)
    write(runs / "detect" / "street.jpg", 50, age_days=40)  # detect's output: no build.json
    write(runs / "foreign" / "build.json", 20, age_days=40)  # someone else's build.json
    age(runs / "foreign", 40)

    report = listed(monkeypatch, capsys)["runs"]
    states = {e["name"]: e["state"] for e in report["entries"]}
    assert states == {"d0-fp32-onnxruntime-1a2b3c4d": "compiled", "d0-int8-onnxruntime-5e6f7a8b": "partial",
                      "fresh-fp32-onnxruntime-9c0d1e2f": "compiled"}
    assert report["bytes"] == sum(e["bytes"] for e in report["entries"]) > 900

    code, _, _ = run_main(monkeypatch, capsys, "cache", "clean", "--all")  # the cache only
    assert code == 0 and len(list(runs.iterdir())) == 5
    code, out, err = run_main(monkeypatch, capsys, "cache", "clean", "--older-than", "30d", "--runs", "--json")
    assert code == 0, err
    assert {Path(e["path"]).name for e in json.loads(out)["runs"]["removed"]} == {
        "d0-fp32-onnxruntime-1a2b3c4d", "d0-int8-onnxruntime-5e6f7a8b"}
    assert sorted(p.name for p in runs.iterdir()) == ["detect", "foreign", "fresh-fp32-onnxruntime-9c0d1e2f"]


def test_doctor_reports_where_the_cache_is_and_its_size(cache, monkeypatch, capsys):
    build_folder(Path("runs") / "d0-fp32-onnxruntime-1a2b3c4d", compiled=True, size=2_500_000)
    code, out, err = run_main(monkeypatch, capsys, "doctor", "--json")
    assert code == 0, err
    report = json.loads(out)
    total = listed(monkeypatch, capsys)["bytes"]
    assert report["cache"] == {"root": str(cache), "from": "$EFFEDGE_CACHE_DIR", "bytes": total, "entries": 7}
    assert report["runs"]["builds"] == 1 and report["runs"]["bytes"] > 2_500_000
    code, out, _ = run_main(monkeypatch, capsys, "doctor")
    assert f"cache: {cache} (from $EFFEDGE_CACHE_DIR): {total / 1000:.1f} kB in 7 entries" in out
    assert "build folders in runs: 2.5 MB (1 folders)" in out


# --- runs/ names --------------------------------------------------------------------------------------------


def test_runs_folder_names_say_what_differs_from_the_defaults():
    from effedge.arch.scaling import resolve
    from effedge.pipeline.compile import CompileConfig, build_folder_name

    d0, b0, key = resolve("d0"), resolve("b0"), "0123456789abcdef"

    def name(spec, backend="onnxruntime", nms="onnx", **fields):
        return build_folder_name(CompileConfig(variant=spec.name, **fields), spec, backend, nms, key)

    assert name(d0) == "d0-fp16-onnxruntime-01234567"
    assert name(d0, image_size=384) == "d0-384px-fp16-onnxruntime-01234567"
    assert name(d0, image_size=d0.resolution) == name(d0)  # the variant's own size is not repeated
    assert name(d0, precision="int8", batch=4, nms="none", input_format="uint8", weights="/w/my site.pth") == \
        "d0-int8-onnxruntime-b4-nms-none-uint8-my_site-01234567"
    assert name(d0, dynamic_batch=(1, 4, 8)) == "d0-fp16-onnxruntime-b1to8-01234567"
    assert name(d0, backend="tensorrt", nms="efficientnms") == "d0-fp16-tensorrt-01234567"  # its default tail
    assert name(d0, backend="tensorrt", nms="onnx") == "d0-fp16-tensorrt-nms-onnx-01234567"
    assert name(b0, nms="none") == "b0-fp16-onnxruntime-01234567"


def test_a_cache_hit_says_which_folder_it_reused(cache, monkeypatch):
    from effedge.io import sha256_file
    from effedge.pipeline.compile import CompileConfig, build_folder_name, cache_key, choose_backend, compile_model
    from effedge.arch.scaling import resolve

    config = CompileConfig(variant="d0", precision="fp32", image_size=256, backend="onnxruntime")
    backend, spec = choose_backend("onnxruntime"), resolve("d0")
    key = cache_key(config, backend, "onnx", None, spec)
    folder = Path("runs") / build_folder_name(config, spec, "onnxruntime", "onnx", key)
    assert folder.name == f"d0-256px-fp32-onnxruntime-{key[:8]}"
    write(folder / "model.fp32.onnx", 10, age_days=20)
    (folder / "build.json").write_text(json.dumps({
        "effedge_manifest": 1, "artifacts": {"model.fp32.onnx": {"sha256": sha256_file(folder / "model.fp32.onnx")}},
        "compile": {"key": key, "deployable": "model.fp32.onnx"}}))
    age(folder, 20)
    messages = []
    manifest = compile_model(config, log=messages.append)
    assert manifest["compile"]["cache_hit"] and manifest["compile"]["out_dir"] == str(folder)
    assert any(m.startswith(f"cache hit: reused {folder}") for m in messages), messages
    assert time.time() - folder.stat().st_mtime < 60  # marked used: clean --older-than keeps it


def test_a_cache_root_set_to_the_home_folder_is_never_cleaned(tmp_path, monkeypatch, capsys):
    """EFFEDGE_CACHE_DIR=~ by mistake: ~/calibration is the user's, whatever its name says."""
    home = tmp_path / "home"
    (home / "calibration").mkdir(parents=True)
    (home / "calibration" / "notes.json").write_text("{}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(home))
    code, _, err = run_main(monkeypatch, capsys, "cache", "clean", "--all")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "refusing to clean" in err and "Traceback" not in err
    assert (home / "calibration" / "notes.json").is_file()
