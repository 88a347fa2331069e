"""Bench harness: statistics on known timings, the run protocol on a fake clock, warnings from constructed
data, tegrastats parsing and energy, and the CLI's outputs. No timing is asserted on real runs."""
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import effedge_cli

from effedge.bench import harness as bench
from effedge.bench import report

# Representative lines of the tegrastats formats (JetPack 5/6): Orin NX / Orin Nano report the module input
# VDD_IN; AGX Orin reports VDD_GPU_SOC, VDD_CPU_CV and VIN_SYS_5V0 (plus VDDQ_VDD2_1V8AO) instead.
ORIN_NX = ("04-21-2026 10:15:23 RAM 2936/15388MB (lfb 2877x4MB) SWAP 0/7694MB (cached 0MB) CPU [1%@729,0%@729,"
           "0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] VIC_FREQ 729 APE 174 CPU@46.843C "
           "Tboard@35C SOC2@43.406C GPU@-256C tj@46.843C VDD_IN 5247mW/5100mW VDD_CPU_GPU_CV 477mW/470mW "
           "VDD_SOC 1512mW/1500mW")
ORIN_NANO = ("RAM 2472/7620MB (lfb 1137x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,0%@729,0%@729,"
             "0%@729,0%@729] EMC_FREQ 0% GR3D_FREQ 0% cpu@47.656C soc2@46.843C soc0@47.125C gpu@46.75C "
             "tj@48.125C soc1@47.25C VDD_IN 4238mW/4238mW VDD_CPU_GPU_CV 521mW/521mW VDD_SOC 1446mW/1446mW")
AGX_ORIN = ("RAM 4505/30536MB (lfb 5953x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@1113,0%@1113,0%@1113,0%@1113] "
            "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 115 APE 174 CV0@-256C CPU@44.187C SOC2@41.5C "
            "VDD_GPU_SOC 3599mW/3599mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 2724mW/2724mW "
            "VDDQ_VDD2_1V8AO 502mW/502mW")


def test_statistics_on_known_timings():
    stats = bench.statistics(range(1, 101))
    assert stats["min"] == 1 and stats["max"] == 100 and stats["mean"] == 50.5 and stats["median"] == 50.5
    assert stats["p90"] == pytest.approx(90.1) and stats["p95"] == pytest.approx(95.05)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["cv"] == pytest.approx(np.std(np.arange(1, 101)) / 50.5)
    assert bench.statistics([4.0] * 7)["cv"] == 0.0
    assert bench.statistics([]) == {}


def test_run_protocol_on_a_fake_clock():
    now_ms = [0]  # integer milliseconds: no float drift in the comparisons under test
    calls = []

    def step():
        now_ms[0] += 10
        calls.append(now_ms[0])
        return bench.Iteration(latency=10.0)

    clock = lambda: now_ms[0] / 1000  # noqa: E731
    settings = bench.BenchSettings(warmup_s=0.1, min_iterations=5, min_duration_s=0.3)
    measured = bench.run(step, settings, clock=clock)
    records = measured.records
    assert len(calls) - len(records) == 10  # 0.1 s of warm-up at 10 ms per step, not recorded
    assert len(records) == 30 and measured.wall_s == pytest.approx(0.3)  # the duration, not the count, decided
    assert measured.start == pytest.approx(0.1)  # the window energy is integrated over starts after warm-up
    measured = bench.run(step, bench.BenchSettings(warmup_s=0, min_iterations=50, min_duration_s=0.1), clock=clock)
    assert len(measured.records) == 50  # the count decided


def test_summary_throughput_and_stages():
    records = [bench.Iteration(latency=20.0, stages={"infer": 15.0, "decode": 5.0}) for _ in range(10)]
    summary = bench.summarize(records, wall_s=0.25, batch=4)
    assert summary["throughput_qps"] == 40 and summary["images_per_s"] == 160
    assert summary["stages_ms"]["infer"]["median"] == 15.0 and "compute_ms" not in summary


def test_warnings_from_constructed_data():
    enqueue_bound = bench.summarize([bench.Iteration(latency=2.0, enqueue=0.9, compute=1.0) for _ in range(5)],
                                    1.0, 1)
    assert any("enqueue-bound" in w for w in bench.warnings_for(enqueue_bound))
    unstable = bench.summarize([bench.Iteration(latency=2.0, compute=c) for c in (1.0, 1.2, 0.8, 1.1)], 1.0, 1)
    advice = {kind: " ".join(bench.warnings_for(unstable, kind)) for kind in ("gpu", "jetson", "cpu")}
    assert "nvidia-smi -lgc" in advice["gpu"] and "jetson_clocks" in advice["jetson"]
    assert "governor" in advice["cpu"] and "nvidia-smi" not in advice["cpu"] and "jetson" not in advice["cpu"]
    stable = bench.summarize([bench.Iteration(latency=2.0, enqueue=0.1, compute=1.0) for _ in range(5)], 1.0, 1)
    assert bench.warnings_for(stable) == []


def test_tegrastats_lines():
    assert bench.parse_tegrastats(ORIN_NX) == 5247.0
    assert bench.parse_tegrastats(ORIN_NANO) == 4238.0
    assert bench.parse_tegrastats(AGX_ORIN) == 3599.0 + 400.0 + 2724.0
    assert bench.parse_tegrastats("RAM 1/2MB CPU [1%@729]") is None


def test_energy_integration():
    constant = [(t, 5000.0) for t in np.arange(0.0, 2.01, 0.05)]
    assert bench.energy_mj(constant, 0.0, 2.0) == pytest.approx(10000.0)
    ramp = [(0.0, 0.0), (1.0, 1000.0)]  # trapezoid: 500 mJ
    assert bench.energy_mj(ramp, 0.0, 1.0) == pytest.approx(500.0)
    assert bench.energy_mj([(0.0, 3000.0)], 1.0, 2.0) == pytest.approx(3000.0)  # last reading held
    assert bench.energy_mj([], 0.0, 1.0) is None


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    from effedge.export.onnx_export import ExportOptions, export

    out = tmp_path_factory.mktemp("bench")
    export("d0", out, options=ExportOptions(image_size=128))
    return out



QUICK = ["--warmup", "0.1", "--duration", "0.3", "--iterations", "3"]


@pytest.fixture
def int8_build(small_build, tmp_path):
    """A build directory as `effedge compile --precision int8 --backend onnxruntime` leaves it (its Q/DQ graph
    stood in for by the fp32 export: bench reads only the manifest's precision and deployable)."""
    import shutil

    from effedge.io import MANIFEST, read_manifest

    build = tmp_path / "d0-int8-onnxruntime"
    shutil.copytree(small_build, build)
    shutil.copyfile(build / "model.sim.onnx", build / "model.int8.onnx")
    manifest = {**read_manifest(build), "precision": "int8", "backend": "onnxruntime",
                "compile": {"deployable": "model.int8.onnx", "out_dir": str(build)}}
    (build / MANIFEST).write_text(json.dumps(manifest))
    return build


def test_bench_json_has_every_field_and_baseline_ratio(int8_build, tmp_path):
    """`bench BUILD --baselines` on an int8 build: the baselines are labelled by what they run (fp32 PyTorch eager
    on this CPU, fp32 ONNX Runtime) in the JSON, the table, the CSV and the plot's series."""
    result = effedge_cli("bench", str(int8_build), "--baselines", "--json", "--csv", str(tmp_path / "b.csv"),
                         "--plot", str(tmp_path / "b.png"), *QUICK)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert [(r["backend"], r["precision"]) for r in results] == [("onnxruntime", "int8"), ("torch", "fp32"),
                                                                  ("onnxruntime", "fp32")]
    target, eager, fp32 = results
    assert not target.get("baseline") and eager["baseline"] and fp32["baseline"]
    assert eager["label"] == "d0 fp32 torch eager (baseline) b1"
    assert fp32["label"] == "d0 fp32 onnxruntime (baseline) b1" and fp32["target"].endswith("model.sim.onnx")
    for r in results:
        for key in ("backend", "precision", "batch", "variant", "throughput_qps", "settings", "versions"):
            assert key in r
        assert set(r["latency_ms"]) >= {"min", "max", "mean", "median", "p90", "p95", "p99"}
        assert r["iterations"] >= 3 and r["versions"]["onnxruntime"]
        assert r["speedup_vs_torch"] == pytest.approx(eager["latency_ms"]["median"] / r["latency_ms"]["median"])
    table = [dict(zip(report.columns(results), row)) for row in report.rows(results)]
    assert [row["precision"] for row in table] == ["int8", "fp32", "fp32"]
    assert [report.series_name(r) for r in results] == ["onnxruntime int8 b1", "torch fp32 b1", "onnxruntime fp32 b1"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "b.csv").read_text())))
    assert [(row["label"], row["precision"]) for row in rows] == [(r["label"], r["precision"]) for r in results]
    assert float(rows[0]["latency_median_ms"]) == pytest.approx(target["latency_ms"]["median"])
    assert float(rows[0]["speedup_vs_torch"]) == pytest.approx(target["speedup_vs_torch"])
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _constructed_result(backend: str, **breakdown) -> dict:
    """A bench result as bench_one returns it, summarised from constructed iterations: latency 1..100 ms (p90
    90.10, p99 99.01) and, per named metric, the latency scaled by the given factor."""
    records = [bench.Iteration(latency=float(ms), **{m: ms * f for m, f in breakdown.items()}) for ms in range(1, 101)]
    return {"label": f"d0 int8 {backend}", "backend": backend, "precision": "int8", "batch": 2, "variant": "d0",
            "phi": 0, "mode": "inference", **bench.summarize(records, wall_s=10.0, batch=2)}


def test_the_table_and_csv_show_the_percentiles_and_the_breakdown_where_measured():
    engine = _constructed_result("tensorrt", h2d=0.1, compute=0.5, d2h=0.2, enqueue=0.01)
    host = _constructed_result("onnxruntime")
    header = report.columns([engine, host])
    table = [dict(zip(header, row)) for row in report.rows([engine, host])]
    assert table[0]["median ms"] == "50.50" and table[0]["p90 ms"] == "90.10" and table[0]["p99 ms"] == "99.01"
    assert table[0]["GPU compute ms med/p99"] == "25.250/49.505"
    assert table[0]["H2D ms med/p99"] == "5.050/9.901" and table[0]["D2H ms med/p99"] == "10.100/19.802"
    assert table[0]["enqueue ms med/p99"] == "0.505/0.990"
    assert [table[1][f"{name} ms med/p99"] for name in ("H2D", "GPU compute", "D2H", "enqueue")] == ["-"] * 4
    assert not any("med/p99" in column for column in report.columns([host]))  # nothing measured, no column
    assert report.to_markdown([engine, host]).splitlines()[0] == "| " + " | ".join(header) + " |"
    rows = list(csv.DictReader(io.StringIO(report.to_csv([engine, host]))))
    assert float(rows[0]["latency_p90_ms"]) == pytest.approx(90.1)
    assert float(rows[0]["latency_p99_ms"]) == pytest.approx(99.01)
    assert float(rows[0]["compute_median_ms"]) == pytest.approx(25.25)
    assert float(rows[0]["compute_p99_ms"]) == pytest.approx(49.505)
    assert float(rows[0]["h2d_p99_ms"]) == pytest.approx(9.901)
    assert float(rows[0]["d2h_median_ms"]) == pytest.approx(10.1)
    assert float(rows[0]["enqueue_median_ms"]) == pytest.approx(0.505)
    assert rows[1]["compute_median_ms"] == "" and rows[1]["energy_mj_per_image"] == ""


def test_bench_end_to_end_reports_stages(small_build, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (200 + 10 * i, 150), (i * 40, 80, 120)).save(tmp_path / f"{i}.jpg")
    result = effedge_cli("bench", str(small_build), "--end-to-end", str(tmp_path), "--json", *QUICK)
    assert result.returncode == 0, result.stderr
    [r] = json.loads(result.stdout)
    assert r["mode"] == "end-to-end"
    assert set(r["stages_ms"]) == {"decode", "letterbox", "infer", "postprocess"}


def test_bench_markdown_and_bad_targets(small_build, tmp_path):
    result = effedge_cli("bench", str(small_build / "model.sim.onnx"), "--markdown", *QUICK)
    assert result.returncode == 0 and result.stdout.startswith("| label |")
    missing = effedge_cli("bench", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    engine_on_ort = effedge_cli("bench", str(small_build / "model.sim.onnx"), "--backend", "tensorrt")
    assert engine_on_ort.returncode == 2 and "runs engines" in engine_on_ort.stderr


def _identity_onnx(path, batch):
    import onnx
    from onnx import helper

    value = [helper.make_tensor_value_info(n, 1, [batch, 3, 8, 8]) for n in ("images", "out")]
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", value[:1], value[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_static_batch_mismatch_is_refused(tmp_path):
    from effedge.bench.targets import bench_one
    from effedge.errors import EffedgeError

    model = _identity_onnx(tmp_path / "m.onnx", 1)
    settings = bench.BenchSettings(warmup_s=0, min_iterations=2, min_duration_s=0, batch=4)
    with pytest.raises(EffedgeError, match="static batch of 1; bench it with --batch 1"):
        bench_one(model, {}, "onnxruntime", settings)


def test_energy_is_integrated_over_the_measured_iterations_only(tmp_path, monkeypatch):
    """Constant 5 W: energy per batch = 5 W × measured time / measured iterations (warm-up excluded); per image,
    that over the batch."""
    import time

    from effedge.bench.targets import bench_one

    class ConstantPower:
        samples = []

        @staticmethod
        def available():
            return True

        def __enter__(self):
            self.samples.append((time.perf_counter(), 5000.0))

        def __exit__(self, *exc):
            self.samples.append((time.perf_counter(), 5000.0))

    monkeypatch.setattr(bench, "TegrastatsSampler", ConstantPower)
    model = _identity_onnx(tmp_path / "m.onnx", 4)
    settings = bench.BenchSettings(warmup_s=0.3, min_iterations=5, min_duration_s=0.1, energy=True, batch=4)
    result = bench_one(model, {}, "onnxruntime", settings)
    per_batch = 5000.0 * result["wall_s"] / result["iterations"]
    assert result["energy_mj_per_batch"] == pytest.approx(per_batch, rel=0.02)
    assert result["energy_mj_per_image"] == pytest.approx(per_batch / 4, rel=0.02)
    assert result["settings"]["energy"] is True  # measured
    table = dict(zip(report.columns([result]), report.rows([result])[0]))
    assert float(table["mJ/image"]) == pytest.approx(per_batch / 4, abs=0.1)
    assert float(table["mJ/batch"]) == pytest.approx(per_batch, abs=0.1)
    [row] = csv.DictReader(io.StringIO(report.to_csv([result])))
    assert float(row["energy_mj_per_image"]) == pytest.approx(result["energy_mj_per_image"])
    assert float(row["energy_mj_per_batch"]) == pytest.approx(result["energy_mj_per_batch"])


def test_matrix_on_the_torch_backend(small_build, monkeypatch):
    """--variants with --backend torch (offered by --help) benches PyTorch eager through the compile cache."""
    import effedge.pipeline.matrix
    from effedge.io import read_manifest
    from effedge.pipeline import bench_matrix

    compiled = []

    def cached_compile(config, *args, **kwargs):  # the build the compile cache would return
        compiled.append(config)
        return {**read_manifest(small_build), "compile": {"out_dir": str(small_build)}}

    monkeypatch.setattr(effedge.pipeline.matrix, "compile_model", cached_compile)
    settings = bench.BenchSettings(warmup_s=0, min_iterations=2, min_duration_s=0)
    [result] = bench_matrix(["d0"], ["fp32"], [1], backend="torch", settings=settings)
    assert result["backend"] == "torch" and result["precision"] == "fp32" and result["iterations"] >= 2
    assert compiled[0].precision == "fp32" and compiled[0].backend == "onnxruntime"
    with pytest.raises(Exception, match="benches PyTorch eager in fp32"):
        bench_matrix(["d0"], ["int8"], [1], backend="torch", settings=settings)


def test_a_cpu_run_gets_cpu_advice_and_claims_no_energy(tmp_path, monkeypatch):
    """ONNX Runtime on this CPU with unsteady timings (a controlled clock): the advice is about the CPU, not
    jetson_clocks / nvidia-smi; with no tegrastats, energy was asked for but not measured, and says so."""
    import types

    import effedge.bench.targets as targets
    from effedge.runtime.onnxruntime import OnnxRuntimeRunner

    now, infer = [0.0], OnnxRuntimeRunner._infer
    durations = iter([0.001, 0.003] * 50)

    def unsteady_infer(self, feed):
        now[0] += next(durations)
        return infer(self, feed)

    monkeypatch.setattr(targets, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(OnnxRuntimeRunner, "_infer", unsteady_infer)
    monkeypatch.setattr(bench.TegrastatsSampler, "available", staticmethod(lambda: False))
    monkeypatch.setattr(bench, "jetson_state", lambda: {})
    settings = bench.BenchSettings(warmup_s=0, min_iterations=6, min_duration_s=0, energy=True)
    result = targets.bench_one(_identity_onnx(tmp_path / "m.onnx", 1), {}, "onnxruntime", settings)
    [unstable] = [w for w in result["warnings"] if "varies" in w]
    assert "governor" in unstable and "jetson_clocks" not in unstable and "nvidia-smi" not in unstable
    assert result["settings"]["energy"] is False
    assert result["energy_mj_per_image"] is None and result["energy_mj_per_batch"] is None


def test_matrix_imgsz_compiles_every_variant_at_that_size(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import effedge.pipeline.matrix
    from effedge.cli import cli
    from effedge.errors import VariantError
    from effedge.pipeline import bench_matrix

    class Compiled(Exception):
        pass

    compiled = []

    def stop(config, **kwargs):
        compiled.append(config)
        raise Compiled  # enough: what it was asked to compile

    monkeypatch.setattr(effedge.pipeline.matrix, "compile_model", stop)
    settings = bench.BenchSettings(warmup_s=0, min_iterations=1, min_duration_s=0, energy=False)
    with pytest.raises(Compiled):
        bench_matrix(["d0", "d1"], ["fp32"], [1], backend="onnxruntime", settings=settings, image_size=256)
    assert [(c.variant, c.image_size) for c in compiled] == [("d0", 256)]
    with pytest.raises(VariantError, match="not a multiple of 128"):  # before anything is compiled
        bench_matrix(["d0", "d1"], ["fp32"], [1], backend="onnxruntime", settings=settings, image_size=200)
    assert len(compiled) == 1
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    refused = CliRunner().invoke(cli, ["bench", str(tmp_path / "m.onnx"), "--imgsz", "256"])
    assert refused.exit_code == 2 and "--imgsz sizes the --variants matrix" in refused.output


def test_matrix_rows_carry_their_speedups(small_build, monkeypatch):
    """--variants ... --baselines: every row of the matrix, baselines included, has its speedup against eager,
    in the JSON and in the table."""
    import effedge.pipeline.matrix
    from effedge.io import read_manifest
    from effedge.pipeline import bench_matrix

    def cached_compile(config, *args, **kwargs):  # the fp32 ONNX Runtime build the compile cache would return
        return {**read_manifest(small_build), "precision": config.precision, "backend": config.backend,
                "compile": {"out_dir": str(small_build), "deployable": "model.sim.onnx"}}

    monkeypatch.setattr(effedge.pipeline.matrix, "compile_model", cached_compile)
    settings = bench.BenchSettings(warmup_s=0, min_iterations=2, min_duration_s=0, energy=False)
    results = bench_matrix(["d0"], ["fp32"], [1], backend="onnxruntime", settings=settings, baselines=True)
    assert [(r["backend"], r["precision"], bool(r.get("baseline"))) for r in results] == [
        ("onnxruntime", "fp32", False), ("torch", "fp32", True)]  # the fp32 row is the ONNX Runtime baseline
    measured, eager = results
    assert eager["speedup_vs_torch"] == 1.0
    assert measured["speedup_vs_torch"] == pytest.approx(eager["latency_ms"]["median"] /
                                                         measured["latency_ms"]["median"])
    assert [row[-1] for row in report.rows(results)] == [f"{measured['speedup_vs_torch']:.2f}×", "1.00×"]


def _recorded_cuda_torch_runner(log: list):
    """A TorchRunner whose device-side steps (to_device, forward, to_host) run on a fake CUDA GPU that records
    each step, and whose CUDA events tick 0.25 ms per record, so what the bench loop does can be asserted."""
    import types

    from effedge.runtime.base import TensorInfo
    from effedge.runtime.torch import TorchRunner

    ticks = iter(range(10 ** 6))

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.tick = None

        def record(self):
            self.tick = next(ticks)

        def elapsed_time(self, end):
            return (end.tick - self.tick) * 0.25

    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=Event, synchronize=lambda: log.append("sync")))

    class RecordedRunner(TorchRunner):
        def activate(self):
            self.torch = fake_torch

        def to_device(self, array):
            log.append("htod")
            return "images on the GPU"

        def forward(self, images):
            assert images == "images on the GPU"
            log.append("compute")
            return ("logits on the GPU",)

        def to_host(self, outputs):
            log.append("dtoh")
            return {"logits": np.zeros((2, 10), np.float32)}

    return RecordedRunner(lambda: None, [TensorInfo("images", ("batch", 3, 8, 8), np.dtype(np.float32))], ["logits"],
                          device="cuda", half=True)


@pytest.mark.parametrize("transfers", [True, False])
def test_torch_on_cuda_follows_the_transfer_policy_of_tensorrt(monkeypatch, transfers):
    """As the TensorRT step (tests/test_cuda_layer.py::test_bench_times_the_runner_on_its_stream): with transfers,
    the input is copied in and every output out on each timed iteration, all inside the latency; with
    --no-transfers, the input is on the GPU once and nothing is copied back. The settings say which."""
    import torch

    import effedge.export
    from effedge.bench.targets import bench_one

    log = []
    runner = _recorded_cuda_torch_runner(log)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(effedge.export, "torch_runner", lambda manifest, device, half: runner)
    settings = bench.BenchSettings(warmup_s=0, min_iterations=3, min_duration_s=0, batch=2, transfers=transfers,
                                   energy=False)
    result = bench_one(Path("model.sim.onnx"), {"variant": "d0"}, "torch", settings)
    iteration = ["htod", "compute", "dtoh", "sync"] if transfers else ["compute", "sync"]
    assert log == ["htod", "sync"] + iteration * (1 + 3)  # inputs once before the loop; the first run; 3 timed
    assert result["iterations"] == 3 and result["precision"] == "fp16"
    assert result["compute_ms"]["median"] == 0.25
    if transfers:
        assert result["h2d_ms"]["median"] == result["d2h_ms"]["median"] == 0.25
        assert result["settings"]["transfer_policy"].startswith("H2D of the inputs and D2H of the outputs on every")
    else:
        assert "h2d_ms" not in result and "d2h_ms" not in result
        assert result["settings"]["transfer_policy"].startswith("none timed (--no-transfers)")


def test_torch_on_cuda_latency_waits_for_the_gpu(monkeypatch):
    """The host latency of a torch CUDA iteration spans its GPU work: the clock stops only after
    torch.cuda.synchronize. (Here, as on a GPU, launches return at once and the GPU's 1 ms per step passes on the
    host clock only when the host waits: a latency read before the wait would miss it.)"""
    import time

    import torch

    import effedge.export
    from effedge.bench.targets import bench_one

    log, pending, waited = [], [], {"ms": 0.0}
    runner = _recorded_cuda_torch_runner(log)
    for step in ("to_device", "forward", "to_host"):
        def queued(*args, _step=getattr(runner, step)):
            pending.append(1.0)
            return _step(*args)
        setattr(runner, step, queued)
    activate = runner.activate

    def activate_with_a_waiting_sync():
        activate()
        synchronize = runner.torch.cuda.synchronize

        def wait():
            waited["ms"] += sum(pending)
            pending.clear()
            synchronize()
        runner.torch.cuda.synchronize = wait

    runner.activate = activate_with_a_waiting_sync
    real_clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + waited["ms"] / 1e3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(effedge.export, "torch_runner", lambda manifest, device, half: runner)
    settings = bench.BenchSettings(warmup_s=0, min_iterations=3, min_duration_s=0, batch=2, energy=False)
    result = bench_one(Path("model.sim.onnx"), {"variant": "d0"}, "torch", settings)
    assert result["latency_ms"]["min"] >= 3.0  # H2D + compute + D2H of the fake GPU
    assert result["first_run"]["first_iteration_ms"] >= 3.0


def test_torch_runs_uint8_input_in_the_weights_dtype():
    """PyTorch in fp16 on CUDA with --input-format uint8 crashed: the normalization made float32 for fp16
    weights. The same path on the CPU with the weights in bfloat16 (CPU kernels have it) must run, float32
    inputs too."""
    import torch

    from effedge.export import torch_runner

    manifest = {"variant": "d0", "family": "efficientdet", "resolution": [128, 128], "weights": "random",
                "input": {"format": "uint8"}}
    images = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    with torch_runner(manifest) as runner:
        runner.module = runner.module.to(torch.bfloat16)
        outputs = runner.infer({"images": images})
        assert runner.to_device(np.zeros((1, 3, 8, 8), np.float32)).dtype == torch.bfloat16
        assert runner.to_device(images).dtype == torch.uint8  # the module's normalization casts it
    assert outputs["scores"].shape == (1, 3069, 90) and outputs["scores"].dtype == np.float32
    assert np.isfinite(outputs["scores"]).all() and np.isfinite(outputs["boxes"]).all()
