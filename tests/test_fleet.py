"""Fleet sweeps (effedge.fleet): SWEEP.yaml, cells and cache keys, the in-process executor, and on a local Ray
cluster the kill, resume and missing-device behaviour. All on examples/sweep-local.yaml's tiny models
(d0 and b0 at 128 px, fp32 and fp16) and two stand-in devices backed by ONNX Runtime; one compile cache for
the whole module."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import effedge_cli

from effedge.errors import EffedgeError
from effedge.fleet import SweepInterrupted, load_sweep, make_plan, run_sweep
from effedge.fleet.plan import FleetCache, fleet_dir, result_key
from effedge.fleet.spec import FaultPolicy
from effedge.plan.profiles import load_profile

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep-local.yaml"
RAY_MISSING = "Ray is not installed (pip install 'effedge[fleet]'); the Ray executor's tests need it"


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """One effedge cache for the module (compiled models are shared); set before Ray starts, so its workers
    see it too."""
    with pytest.MonkeyPatch.context() as patcher:
        root = tmp_path_factory.mktemp("fleet")
        patcher.setenv("EFFEDGE_CACHE_DIR", str(root / "cache"))
        yield root / "cache"


@pytest.fixture
def fresh_results():
    """No measured cell from an earlier test (compiled models stay cached)."""
    shutil.rmtree(fleet_dir() / "results", ignore_errors=True)


def example(**changes):
    return dataclasses.replace(load_sweep(EXAMPLE), **changes)


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- SWEEP.yaml --------------------------------------------------------------------------------------------

def test_example_sweep_loads():
    spec = load_sweep(EXAMPLE)
    assert spec.models == ("d0", "b0") and spec.precisions == ("fp32", "fp16") and spec.image_size == 128
    own = EXAMPLE.parent / "profiles"
    assert [(d.name, d.profile, d.backend) for d in spec.devices] == [
        ("cpu-a", str(own / "cpu-a.yaml"), "onnxruntime"), ("cpu-b", str(own / "cpu-b.yaml"), "onnxruntime")]
    assert spec.bench.min_duration_s == 0.5 and spec.faults == FaultPolicy(2, 60.0, 3)


@pytest.mark.parametrize("text, message", [
    ("models: [d0]\nprecisions: [fp32]\ndevices: [cpu-local]\nbatchs: [1]\n",
     "batchs: unknown key (did you mean batches?)"),
    ("models: [d0]\nprecisions: [fp8]\ndevices: [cpu-local]\n", "precisions[0]: 'fp8' is not one of"),
    ("models: [d0, e3]\nprecisions: [fp32]\ndevices: [cpu-local]\n", "models[1]: unknown variant"),
    ("models: [d0, efficientdet-d0]\nprecisions: [fp32]\ndevices: [cpu-local]\n",
     "models[1]: 'efficientdet-d0' is the same model as models[0]"),
    ("models: [d0]\nimage_size: 100\nprecisions: [fp32]\ndevices: [cpu-local]\n",
     "image_size: 100 is not a multiple of 128"),
    ("models: [d0]\nprecisions: [fp32]\ndevices: [orin-nx]\n", "devices[0].profile: unknown profile 'orin-nx'"),
    ("models: [d0]\nprecisions: [fp32]\ndevices: [{name: CPU, profile: cpu-local}]\n",
     "devices[0].name: 'CPU' is one of Ray's own resources"),
    ("models: [d0]\nprecisions: [fp32]\ndevices: [{name: a, profile: cpu-local}, {name: a, profile: a100}]\n",
     "devices[1].name: device 'a' is listed twice"),
    ("models: [d0]\nprecisions: [fp32]\ndevices: [{name: a, profile: cpu-local, backend: tensorrt-rtx}]\n",
     "devices[0].backend: 'tensorrt-rtx' is not one of onnxruntime, tensorrt"),
    ("models: [d0]\nprecisions: [fp32]\ndevices: [cpu-local]\nbench: {min_duration_s: 3 s}\n",
     "bench.min_duration_s: expected a number"),
    ("models: [d0]\nprecisions: [fp32]\n", "devices: missing"),
    ("models: [d0]\nprecisions: [fp32, fp32]\ndevices: [cpu-local]\n", "precisions: lists an entry twice"),
])
def test_sweep_file_errors_name_file_and_field(tmp_path, text, message):
    path = write_sweep(tmp_path / "sweep.yaml", text)
    with pytest.raises(EffedgeError) as caught:
        load_sweep(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_profile_files_are_relative_to_the_sweep_file(tmp_path):
    shutil.copy(load_sweep(EXAMPLE).path.parent.parent / "profiles" / "cpu-local.yaml", tmp_path / "mine.yaml")
    (tmp_path / "sub").mkdir()
    path = write_sweep(tmp_path / "sub" / "sweep.yaml",
                       "models: [b0]\nprecisions: [fp32]\ndevices: [{name: box, profile: ../mine.yaml}]\n")
    assert load_sweep(path).devices[0].profile == str(tmp_path / "mine.yaml")


def test_cli_reports_a_bad_sweep_file_in_one_line(tmp_path):
    path = write_sweep(tmp_path / "sweep.yaml", "models: [d0]\nprecisions: [fp32]\ndevices: [cpu-locl]\n")
    run = effedge_cli("sweep", str(path), timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"error: {path}: devices[0].profile: unknown profile 'cpu-locl'; "
                                  "did you mean cpu-local?")


# --- cells and keys ----------------------------------------------------------------------------------------

def test_plan_has_every_model_precision_batch_on_every_device():
    jobs, cells = make_plan(example(batches=(1, 2)))
    assert len(jobs) == 2 * 2 * 2 and len(cells) == 2 * 2 * 2 * 2
    assert len({c.id for c in cells}) == len(cells) and len({c.slug for c in cells}) == len(cells)
    assert {(c.job.variant, c.job.precision, c.job.batch, c.device.name) for c in cells} == {
        (v, p, b, d) for v in ("d0", "b0") for p in ("fp32", "fp16") for b in (1, 2) for d in ("cpu-a", "cpu-b")}


def test_result_key_is_artefact_device_bench_settings_and_fingerprint():
    spec = example()
    a, b = spec.devices
    fingerprint = {"tensorrt": "10.3.0", "power_mode": "MAXN"}
    key = result_key("0" * 64, a, spec.bench, fingerprint)
    assert key == result_key("0" * 64, a, spec.bench, dict(fingerprint))
    assert len({key, result_key("1" * 64, a, spec.bench, fingerprint), result_key("0" * 64, b, spec.bench, fingerprint),
                result_key("0" * 64, a, dataclasses.replace(spec.bench, min_duration_s=9), fingerprint),
                result_key("0" * 64, dataclasses.replace(a, backend="tensorrt"), spec.bench, fingerprint),
                result_key("0" * 64, a, spec.bench, {**fingerprint, "tensorrt": "10.13.3"}),
                result_key("0" * 64, a, spec.bench, {**fingerprint, "power_mode": "15W"})}) == 7


# --- in process --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_sweep():
    """The example, in process, from an empty results cache (compiles the four models for the module)."""
    shutil.rmtree(fleet_dir() / "results", ignore_errors=True)
    return run_sweep(load_sweep(EXAMPLE))


def test_in_process_sweep_measures_every_cell_on_its_device(first_sweep):
    cells = first_sweep.cells
    assert first_sweep.executor == "in-process" and len(cells) == 8
    assert first_sweep.stats["host_tasks"] == 4 and first_sweep.stats["device_tasks"] == 8
    assert sorted(c["cell"] for c in cells) == sorted(c.id for c in make_plan(load_sweep(EXAMPLE))[1])
    for cell in cells:
        assert cell["status"] == "ok" and cell["cell"].endswith(f"@ {cell['device']}")
        assert cell["node"] == platform.node() and cell["attempt"] == 1 and not cell["cached"]
        assert cell["backend"] == "onnxruntime" and cell["latency_ms"]["median"] > 0
        assert cell["settings"]["batch"] == 1 and cell["settings"]["min_duration_s"] == 0.5
        assert Path(cell["target"]).is_relative_to(fleet_dir() / "devices" / cell["device"])
    assert {(c["variant"], c["precision"]) for c in cells} == {(v, p) for v in ("d0", "b0") for p in ("fp32", "fp16")}


def test_rerun_runs_no_compile_and_no_bench(first_sweep):
    again = run_sweep(load_sweep(EXAMPLE))
    assert again.stats["host_tasks"] == 0 and again.stats["device_tasks"] == 0 and again.stats["cached"] == 8
    assert all(c["cached"] for c in again.cells)
    # the same measurements, made by the first run
    assert [c["latency_ms"] for c in again.cells] == [c["latency_ms"] for c in first_sweep.cells]
    assert {c["run_id"] for c in again.cells} == {first_sweep.run_id} != {again.run_id}


def test_rerun_runs_only_the_missing_cell(first_sweep):
    lost = first_sweep.cells[5]
    (fleet_dir() / "results" / f"{lost['result_key']}.json").unlink()
    again = run_sweep(load_sweep(EXAMPLE))
    assert again.stats["host_tasks"] == 1 and again.stats["device_tasks"] == 1 and again.stats["cached"] == 7
    rerun = [c for c in again.cells if not c["cached"]]
    assert [c["cell"] for c in rerun] == [lost["cell"]] and rerun[0]["run_id"] == again.run_id


def test_device_fingerprint_names_runtime_gpu_l4t_and_power_mode(monkeypatch):
    import effedge.bench.harness
    from effedge.fleet import device

    monkeypatch.setattr(device, "_nvidia_gpu", lambda: {"name": "Orin", "compute_capability": "8.7",
                                                        "driver": "540.4.0"})
    monkeypatch.setattr(device, "_first_line", lambda path: "# R36 (release), REVISION: 4.3" if "tegra" in path else None)
    monkeypatch.setattr(effedge.bench.harness, "jetson_state", lambda: {"power_mode": "MAXN"})
    monkeypatch.setattr(device, "tool_versions", lambda: {"tensorrt": "10.3.0", "onnxruntime": "1.31.0"})
    fingerprint = device.device_fingerprint("tensorrt")
    assert fingerprint["tensorrt"] == "10.3.0" and "onnxruntime" not in fingerprint
    assert fingerprint["gpu"] == {"name": "Orin", "compute_capability": "8.7", "driver": "540.4.0"}
    assert fingerprint["l4t"] == "# R36 (release), REVISION: 4.3" and fingerprint["power_mode"] == "MAXN"
    assert device.device_fingerprint("onnxruntime")["onnxruntime"] == "1.31.0"


def test_an_upgrade_or_another_power_mode_measures_again(first_sweep, monkeypatch):
    """Cached results count only under the software and power mode they were measured with: after the
    device's runtime is upgraded every cell runs again (on the compiled graphs), and again after the power
    mode changes; the new measurements are cached under the new fingerprint."""
    import effedge.bench.harness
    from effedge.fleet import device

    versions = device.tool_versions
    monkeypatch.setattr(device, "tool_versions", lambda: {**versions(), "onnxruntime": "99.0.0"})
    upgraded = run_sweep(load_sweep(EXAMPLE))
    assert upgraded.stats["device_tasks"] == 8 and upgraded.stats["cached"] == 0
    assert {c["device_fingerprint"]["onnxruntime"] for c in upgraded.cells} == {"99.0.0"}
    assert run_sweep(load_sweep(EXAMPLE)).stats["cached"] == 8  # measured under this fingerprint now
    monkeypatch.setattr(effedge.bench.harness, "jetson_state", lambda: {"power_mode": "15W"})
    small = example(models=("b0",), precisions=("fp32",))
    other_mode = run_sweep(small)
    assert other_mode.stats["device_tasks"] == 2 and other_mode.stats["cached"] == 0
    assert {c["device_fingerprint"]["power_mode"] for c in other_mode.cells} == {"15W"}


def test_results_follow_the_artefact_hash(first_sweep):
    """Results are keyed by the artefact's hash: another graph for the same cell is not served from the cache."""
    cache = FleetCache()
    job = make_plan(load_sweep(EXAMPLE))[0][0]
    key = job.key()
    meta = cache.artefact(key)
    cache.record_artefact(key, {**meta, "sha256": "f" * 64})  # the ledger now names another artefact
    resumed = run_sweep(load_sweep(EXAMPLE))
    assert resumed.stats["host_tasks"] == 1  # the ledger's artefact has no results: compile (a cache hit) ...
    assert resumed.stats["device_tasks"] == 0  # ... which yields the real artefact, measured before
    assert cache.artefact(key)["sha256"] == meta["sha256"]


def test_a_failing_device_is_given_up_and_the_rest_finishes(first_sweep):
    """No TensorRT here: a device declared as TensorRT fails each cell with the reason; after
    max_consecutive_failures its other cells are not run; the other device's cells are all measured."""
    spec = load_sweep(EXAMPLE)
    broken = dataclasses.replace(spec.devices[1], name="jetson", backend="tensorrt")
    report = run_sweep(dataclasses.replace(spec, devices=(spec.devices[0], broken),
                                           faults=FaultPolicy(max_consecutive_failures=2)))
    assert len(report.cells) == 8
    mine = [c for c in report.cells if c["device"] == "jetson"]
    assert all(c["status"] == "failed" for c in mine)
    assert [c["error"].startswith("not run: jetson failed 2 cells in a row") for c in mine] == [False, False,
                                                                                                  True, True]
    assert "TensorRT" in mine[0]["error"] and report.stats["device_tasks"] == 2  # the given-up cells never ran
    assert all(c["status"] == "ok" for c in report.cells if c["device"] == "cpu-a")


def test_ctrl_c_keeps_finished_cells_whole_and_runs_the_rest_later(first_sweep, fresh_results, tmp_path):
    def interrupt_after_first_cell(status):
        if status.event.endswith("ms)"):  # a cell is done (and cached)
            raise KeyboardInterrupt

    with pytest.raises(SweepInterrupted, match=r"interrupted: 1 of 8 cells ended"):
        run_sweep(load_sweep(EXAMPLE), progress=interrupt_after_first_cell)
    files = list((fleet_dir() / "results").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["status"] == "ok"  # whole, no temp file
    resumed = run_sweep(load_sweep(EXAMPLE))
    assert resumed.stats["cached"] == 1 and resumed.stats["device_tasks"] == 7


def test_cli_ctrl_c_exits_130_in_one_line_and_writes_no_output(first_sweep, fresh_results, tmp_path):
    results = fleet_dir() / "results"
    sweep = subprocess.Popen([sys.executable, "-m", "effedge", "sweep", str(EXAMPLE), "--csv", str(tmp_path / "s.csv")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (results.is_dir() and any(results.iterdir())):
        time.sleep(0.05)
    sweep.send_signal(signal.SIGINT)  # as Ctrl-C does, once the first cell is cached
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted: ") and "Traceback" not in stderr
    assert not (tmp_path / "s.csv").exists()
    assert all(json.loads(f.read_text())["status"] == "ok" for f in results.iterdir())  # only whole cells


def test_csv_has_device_node_and_attempt_for_every_cell(first_sweep, tmp_path):
    from effedge.fleet import write_outputs

    report = dataclasses.replace(first_sweep, cells=first_sweep.cells[:2] + [
        {**first_sweep.cells[2], "status": "failed", "error": "device gone", "node": None, "attempt": None}])
    write_outputs(report, str(tmp_path / "sweep.csv"), str(tmp_path / "sweep.png"))
    import csv

    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["device"], r["node"], r["attempt"], r["status"]) for r in rows] == [
        ("cpu-a", platform.node(), "1", "ok"), ("cpu-b", platform.node(), "1", "ok"), ("cpu-a", "", "", "failed")]
    assert rows[0]["latency_median_ms"] and not rows[2]["latency_median_ms"] and rows[2]["error"] == "device gone"
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")


def tail_free_profiles(tmp_path):
    """The example's devices, each with its own copy of cpu-local that deploys tail-free graphs (as a sweep
    measures them)."""
    import yaml

    data = yaml.safe_load((load_sweep(EXAMPLE).path.parent.parent / "profiles" / "cpu-local.yaml").read_text())
    data["target"]["nms"] = "none"
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return tuple(dataclasses.replace(d, profile=str(tmp_path / f"{n}.yaml"))
                 for d, n in zip(load_sweep(EXAMPLE).devices, "ab"))


def test_fit_refuses_a_profile_that_deploys_another_nms_tail(tmp_path):
    """cpu-local deploys the onnx tail (what compile puts on ONNX Runtime): tail-free sweep graphs would fit it
    to the wrong graph, so --fit refuses before running anything."""
    shutil.copy(load_sweep(EXAMPLE).path.parent.parent / "profiles" / "cpu-local.yaml", tmp_path / "a.yaml")
    spec = load_sweep(EXAMPLE)
    device = dataclasses.replace(spec.devices[0], profile=str(tmp_path / "a.yaml"))
    with pytest.raises(EffedgeError, match=r"deploys the onnx NMS tail.*set target.nms: none"):
        run_sweep(dataclasses.replace(spec, devices=(device,)), fit=True, log=lambda m: pytest.fail("it ran"))


def test_fit_fits_each_device_profile_from_its_own_results(first_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFEDGE_PROFILE_DIR", str(tmp_path / "fitted"))  # fits go to the user profile directory
    devices = tail_free_profiles(tmp_path)
    report = run_sweep(dataclasses.replace(load_sweep(EXAMPLE), devices=devices), fit=True)
    import yaml

    for device, name in zip(devices, "ab"):
        assert report.fits[device.name]["written_to"] == str(tmp_path / "fitted" / f"{name}.yaml")
        stored = yaml.safe_load((tmp_path / "fitted" / f"{name}.yaml").read_text())["model"]
        mine = [c for c in report.cells if c["device"] == device.name]
        assert sorted(m["latency_ms"] for m in stored["measured"]) == sorted(c["latency_ms"]["median"] for c in mine)
        precisions = {c["precision"] for c in mine}
        assert set(stored["fits"]) == precisions == set(report.fits[device.name]["fitted"])
        assert {m["nms"] for m in stored["measured"]} == {"none"} == {f["nms"] for f in stored["fits"].values()}
        assert {tuple(m["resolution"]) for m in stored["measured"]} == {(128, 128)}
        for precision in precisions:  # each fit reproduces its own device's points
            points = report.fits[device.name]["fitted"][precision]["points"]
            assert len(points) == sum(c["precision"] == precision for c in mine)
            assert all(abs(p["error"]) <= 0.05 for p in points)
    # the measured points were taken at 128 px: they count for D0 at 128 px, never for D0 at its own 512 px
    from effedge.plan import latency
    from effedge.plan.latency import LayerCost

    monkeypatch.setattr(latency, "candidate_costs", lambda spec, precision: [LayerCost("conv", 1e9 * (1 + spec.phi),
                                                                                       1e6, 0)])
    fitted = load_profile(str(tmp_path / "fitted" / "a.yaml"))
    assert fitted.measured_ms("d0", 128, 1, "fp32") is not None
    candidates, _ = latency.select(fitted, precision="fp32")
    assert {c.source for c in candidates} == {"predicted"}


def test_fit_refuses_devices_sharing_a_profile():
    spec = load_sweep(EXAMPLE)
    shared = tuple(dataclasses.replace(d, profile=spec.devices[0].profile) for d in spec.devices)
    with pytest.raises(EffedgeError, match="devices cpu-a and cpu-b share the profile .*cpu-a.yaml"):
        run_sweep(dataclasses.replace(spec, devices=shared), fit=True, log=lambda m: pytest.fail("it ran"))


def test_the_example_sweep_fits_as_shipped(first_sweep, tmp_path, monkeypatch):
    """`effedge sweep examples/sweep-local.yaml --fit` (its cells cached by first_sweep) fits each stand-in
    device's own profile from its own results."""
    from click.testing import CliRunner

    from effedge.cli import cli

    monkeypatch.setenv("EFFEDGE_PROFILE_DIR", str(tmp_path / "fitted"))
    result = CliRunner().invoke(cli, ["sweep", str(EXAMPLE), "--fit", "--json"])
    assert result.exit_code == 0, result.output
    for device in ("cpu-a", "cpu-b"):
        fitted = load_profile(str(tmp_path / "fitted" / f"{device}.yaml"))
        assert set(fitted.fits) == {"fp32", "fp16"} and {f.nms for f in fitted.fits.values()} == {"none"}
        assert fitted.measured_ms("d0", 128, 1, "fp32") is not None


def test_sweep_imgsz_sizes_every_model(tmp_path):
    from click.testing import CliRunner

    from effedge.cli import cli
    from effedge.fleet import with_image_size

    spec = with_image_size(load_sweep(EXAMPLE), 256)
    assert spec.image_size == 256 and {job.image_size for job in make_plan(spec)[0]} == {256}
    with pytest.raises(EffedgeError, match=r"sweep-local.yaml: --imgsz: 192 is not a multiple of 128"):
        with_image_size(load_sweep(EXAMPLE), 192)
    result = CliRunner().invoke(cli, ["sweep", str(EXAMPLE), "--imgsz", "192"])
    assert result.exit_code != 0 and "--imgsz: 192 is not a multiple of 128" in str(result.exception)


def test_device_stage_runs_without_torch_or_onnx(first_sweep, tmp_path):
    """What a Jetson runs: the shipped graph is checked, written and benched with no torch/onnx installed."""
    from effedge.fleet.host import run_host_stage

    spec = load_sweep(EXAMPLE)
    job, cells = make_plan(spec)[0][0], make_plan(spec)[1]
    _, payload = run_host_stage(job, job.key())
    work = tmp_path / "job.pickle"
    work.write_bytes(pickle.dumps((cells[0], payload, dataclasses.replace(spec.bench, batch=1))))
    code = ("import sys, pickle; sys.modules.update({m: None for m in ('torch', 'onnx', 'modelopt', 'onnxsim', "
            "'PIL', 'ray')}); from effedge.fleet.device import run_device_stage; "
            f"cell, payload, settings = pickle.loads(open({str(work)!r}, 'rb').read()); "
            "r = run_device_stage(cell, payload, settings, 'isolated'); print(r['device'], r['status'], r['attempt'])")
    env = {**os.environ, "EFFEDGE_CACHE_DIR": str(tmp_path / "device-cache")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.stdout.strip() == "cpu-a ok 1", run.stderr
    if importlib.util.find_spec("ray") is not None:  # what a Ray worker on the device imports for its task
        code = ("import sys; sys.modules.update({m: None for m in ('torch', 'onnx', 'modelopt', 'onnxsim', 'PIL')}); "
                "import effedge.fleet.ray_executor; print('ok')")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert run.stdout.strip() == "ok", run.stderr


def test_device_stage_refuses_a_damaged_graph(first_sweep, tmp_path, monkeypatch):
    from effedge.fleet.device import run_device_stage
    from effedge.fleet.host import run_host_stage

    spec = load_sweep(EXAMPLE)
    job, cell = make_plan(spec)[0][0], make_plan(spec)[1][0]
    _, payload = run_host_stage(job, job.key())
    damaged = {**payload, "data": payload["data"][:-1] + bytes([payload["data"][-1] ^ 1])}
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "device-cache"))
    with pytest.raises(EffedgeError, match="arrived damaged"):
        run_device_stage(cell, damaged, spec.bench, "damaged")
    assert not list((tmp_path / "device-cache").rglob("*.onnx"))


def test_tensorrt_device_builds_its_engine_on_the_device_once(first_sweep, tmp_path, monkeypatch):
    """Wiring of the TensorRT device path (no TensorRT here): the engine is built in the device's cache from the
    shipped graph, the engine is what gets benched, and a later cell of the same graph reuses it."""
    import effedge.bench.targets
    import effedge.pipeline.compile
    from effedge.io import sha256_file, write_json
    from effedge.fleet.device import run_device_stage
    from effedge.fleet.host import run_host_stage
    from effedge.io import read_manifest

    spec = load_sweep(EXAMPLE)
    job, cell = make_plan(spec)[0][0], make_plan(spec)[1][0]
    _, payload = run_host_stage(job, job.key())
    builds, benched = [], []

    def build(source, engine, *, backend, log):  # records what effedge build records in build.json
        builds.append((source, engine, backend))
        engine.write_bytes(b"plan of " + source.read_bytes()[:16])
        manifest = read_manifest(engine.parent)
        manifest.setdefault("engines", {})[engine.name] = {"version": None, "source": {"sha256": sha256_file(source)}}
        manifest.setdefault("artifacts", {})[engine.name] = {"sha256": sha256_file(engine)}
        write_json(engine.parent / "build.json", manifest)

    def bench(path, manifest, backend, settings, label):
        benched.append((path, backend))
        return {"latency_ms": {"median": 1.0}}

    monkeypatch.setattr(effedge.pipeline.compile, "build_engine_file", build)
    monkeypatch.setattr(effedge.bench.targets, "bench_one", bench)
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "jetson-cache"))
    jetson = dataclasses.replace(cell, device=dataclasses.replace(cell.device, name="jetson", backend="tensorrt"))
    first = run_device_stage(jetson, payload, spec.bench, "run-1")
    second = run_device_stage(jetson, payload, spec.bench, "run-2")
    workdir = tmp_path / "jetson-cache" / "fleet" / "devices" / "jetson" / payload["sha256"][:24]
    assert builds == [(workdir / "model.fp32.onnx", workdir / "model.fp32.engine", "tensorrt")]
    assert benched == [(workdir / "model.fp32.engine", "tensorrt")] * 2
    assert first["engine"]["built"] and not second["engine"]["built"]


def test_in_process_path_needs_no_ray(first_sweep):
    code = ("import sys; sys.modules['ray'] = None; from effedge.fleet import load_sweep, run_sweep; "
            f"r = run_sweep(load_sweep({str(EXAMPLE)!r})); print(len(r.cells), r.stats['cached'])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.stdout.strip() == "8 8", run.stderr
    code = ("import sys; sys.modules['ray'] = None; from effedge.errors import EffedgeError; "
            "from effedge.fleet import load_sweep, run_sweep\ntry:\n"
            f"    run_sweep(load_sweep({str(EXAMPLE)!r}), ray='local')\nexcept EffedgeError as e:\n    print(e)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "--ray needs Ray: pip install 'effedge[fleet]'" in run.stdout, run.stderr


# --- on Ray ------------------------------------------------------------------------------------------------

def test_an_unreachable_head_fails_in_one_line(first_sweep, fresh_results):
    pytest.importorskip("ray", reason=RAY_MISSING)
    run = effedge_cli("sweep", str(EXAMPLE), "--ray", "127.0.0.1:1", timeout=120)  # nothing listens on port 1
    assert run.returncode == 2
    assert run.stderr.strip() == ("error: cannot reach the Ray head at 127.0.0.1:1 (Connection refused); start it "
                                  "there with `ray start --head`, or use --ray local")


@pytest.fixture(scope="module")
def ray_cluster(module_cache):
    """A local cluster: 2 CPUs and the two stand-in devices as custom resources of capacity 1."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    ray.init(num_cpus=2, resources={"cpu-a": 1, "cpu-b": 1}, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_sweep_returns_8_cells_each_from_its_device(ray_cluster, fresh_results):
    report = run_sweep(load_sweep(EXAMPLE), ray="local")
    node_id = ray_cluster.get_runtime_context().get_node_id()
    assert report.executor == "ray (local)" and len(report.cells) == 8 and report.stats["device_tasks"] == 8
    assert len({c["cell"] for c in report.cells}) == 8
    for cell in report.cells:
        assert cell["status"] == "ok" and cell["cell"].endswith(f"@ {cell['device']}")
        assert cell["ray_resources"] == {cell["device"]: 1.0}  # the task held its device, and only it
        assert cell["ray_node_id"] == node_id and cell["node"] == platform.node() and cell["attempt"] == 1


def test_ray_rerun_runs_no_compile_and_no_bench_task(ray_cluster, fresh_results):
    first = run_sweep(load_sweep(EXAMPLE), ray="local")
    again = run_sweep(load_sweep(EXAMPLE), ray="local")
    assert (again.stats["host_tasks"], again.stats["device_tasks"], again.stats["cached"]) == (0, 0, 8)
    assert {c["run_id"] for c in again.cells} == {first.run_id}


def test_worker_killed_mid_bench_is_retried_and_no_cell_is_lost_or_doubled(ray_cluster, fresh_results):
    spec = example(bench=dataclasses.replace(load_sweep(EXAMPLE).bench, warmup_s=0.5, min_duration_s=2.0))
    victim = make_plan(spec)[1][0]
    killed = []

    def kill_first_attempt():  # the attempt log appears as the device stage starts; it names the worker's pid
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for log in (fleet_dir() / "attempts").glob(f"*/{victim.slug}.jsonl"):
                first = (log.read_text().splitlines() or [""])[0]
                if not first.endswith("}"):  # created, its first line not yet written: look again
                    continue
                pid = json.loads(first)["pid"]
                time.sleep(0.5)  # into the bench: 0.5 s warm-up, then at least 2 s of timed iterations
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_attempt, daemon=True)
    killer.start()
    report = run_sweep(spec, ray="local")
    killer.join()
    assert killed, "the victim's first attempt never started"
    assert len(report.cells) == 8 and len({c["cell"] for c in report.cells}) == 8
    assert all(c["status"] == "ok" for c in report.cells)
    attempts = {c["cell"]: c["attempt"] for c in report.cells}
    assert attempts.pop(victim.id) == 2 and set(attempts.values()) == {1}
    assert len(list((fleet_dir() / "results").iterdir())) == 8


def test_a_device_that_never_joins_has_its_cells_failed(ray_cluster, fresh_results):
    spec = load_sweep(EXAMPLE)
    absent = dataclasses.replace(spec.devices[1], name="cpu-c")
    report = run_sweep(dataclasses.replace(spec, models=("b0",), precisions=("fp32",),
                                           devices=(spec.devices[0], absent),
                                           faults=FaultPolicy(device_wait_s=1)), ray="local")
    by_device = {c["device"]: c for c in report.cells}
    assert by_device["cpu-a"]["status"] == "ok"
    assert by_device["cpu-c"]["status"] == "failed"
    assert "device cpu-c never joined the cluster" in by_device["cpu-c"]["error"]


def test_ctrl_c_on_ray_cancels_outstanding_tasks(ray_cluster, fresh_results):
    def interrupt_after_first_cell(status):
        if status.event.endswith("ms)"):
            raise KeyboardInterrupt

    with pytest.raises(SweepInterrupted):
        run_sweep(load_sweep(EXAMPLE), ray="local", progress=interrupt_after_first_cell)
    deadline = time.monotonic() + 60  # cancelled tasks give their device back
    while time.monotonic() < deadline and any(ray_cluster.available_resources().get(d, 0) < 1
                                              for d in ("cpu-a", "cpu-b")):
        time.sleep(0.2)
    assert all(ray_cluster.available_resources().get(d, 0) == 1 for d in ("cpu-a", "cpu-b"))
    assert all(json.loads(f.read_text())["status"] == "ok" for f in (fleet_dir() / "results").iterdir())


def test_cli_sweep_on_local_ray_returns_every_cell_with_device_and_node(fresh_results):
    """The acceptance command: its own local cluster, started and stopped by the sweep."""
    pytest.importorskip("ray", reason=RAY_MISSING)
    run = effedge_cli("sweep", str(EXAMPLE), "--ray", "local", "--json", timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["executor"] == "ray (local)" and report["stats"]["device_tasks"] == 8
    assert len(report["cells"]) == 8 and all(
        c["node"] == platform.node() and c["attempt"] == 1 and c["ray_resources"] == {c["device"]: 1.0}
        for c in report["cells"])
