"""The TensorRT-RTX runner against the real API surface of the installed TensorRT-RTX (the `rtx_fake` fixture:
every attribute, property and call is checked against tensorrt_rtx's real classes and signatures) and a fake
cuda-python runtime (tests/cuda_fake.py): validity and GPU checks before deserializing, the runtime cache
beside the engine, the JIT time, no plugin library; the harness's TensorRT-RTX fake itself; bench's first run
and the runner choice of bench and the Detector."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from cuda_fake import FakeCudaRuntime
from test_cli_validation import check_suggestions
from trt_fixtures import declare_engine_io, doubling_execute

from effedge.runtime.engine_manifest import engine_backend
from effedge.runtime.engines import engine_runner
from effedge.runtime.tensorrt import TensorRTRunner
from effedge.runtime.tensorrt_rtx import TensorRTRTXRunner, runtime_cache_path
from effedge.engine import capabilities_of
from effedge.errors import EffedgeError

RTX_4090 = {"name": b"NVIDIA GeForce RTX 4090", "capability": (8, 9)}
BATCH = 2


@pytest.fixture
def rtx(rtx_fake):
    """The TensorRT-RTX fake, every plan valid unless a test says otherwise."""
    rtx_fake.set_return("Runtime.get_engine_validity", (rtx_fake.EngineValidity.VALID, 0))
    return rtx_fake


@pytest.fixture
def cudart(monkeypatch):
    return FakeCudaRuntime(**RTX_4090).install(monkeypatch)


def _doubling_engine(trt, cudart):
    """A static engine images (2, 4) -> scores (2, 4) = 2 * images, computed on the stream in device memory."""
    io = {"images": (trt.TensorIOMode.INPUT, (BATCH, 4)), "scores": (trt.TensorIOMode.OUTPUT, (BATCH, 4))}
    declare_engine_io(trt, io)
    trt.set_handler("IExecutionContext.get_tensor_shape", lambda context, name: io[name][1])
    doubling_execute(trt, cudart, lambda: BATCH)


def _engine_file(tmp_path, name="model.fp16.engine"):
    path = tmp_path / name
    path.write_bytes(b"rtx-plan")
    return path


def _rtx_entry(path, **extra):
    return {"backend": "tensorrt-rtx", "product": "TensorRT-RTX", "version": "1.7.1.116",
            "compute_capabilities": ["default"], "bytes": path.stat().st_size, **extra}


def _manifest(path, **extra):
    return {"engines": {path.name: _rtx_entry(path, **extra)}}


def _images(seed=0):
    return np.random.default_rng(seed).standard_normal((BATCH, 4)).astype(np.float32)


# --- the harness: a checked fake of the real tensorrt_rtx ----------------------------------------------------


def test_fixture_installs_a_fake_of_the_installed_tensorrt_rtx(rtx_fake):
    import tensorrt_rtx

    assert tensorrt_rtx is rtx_fake and rtx_fake.__name__ == "tensorrt_rtx"
    caps = capabilities_of(rtx_fake)  # effedge recognises it as TensorRT-RTX
    assert (caps.backend, caps.version) == ("tensorrt-rtx", rtx_fake.trt_version)
    assert "tensorrt" not in sys.modules or sys.modules["tensorrt"] is not rtx_fake


def test_the_fake_has_the_rtx_api_and_not_full_tensorrt_s(rtx_fake):
    trt = rtx_fake
    with pytest.raises(AttributeError, match=f"^tensorrt_rtx {trt.trt_version} has no attribute 'BuilderFlag.INT8'$"):
        trt.BuilderFlag.INT8  # always strongly typed: no precision flags
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"plan")
    config = engine.create_runtime_config()
    cache = config.create_runtime_cache()
    assert isinstance(cache, trt.IRuntimeCache) and config.set_runtime_cache(cache) is True
    assert isinstance(engine.create_execution_context(runtime_config=config), trt.IExecutionContext)
    with pytest.raises(TypeError, match=r"argument 'cache': expected tensorrt_rtx.IRuntimeCache"):
        config.set_runtime_cache(config)
    with pytest.raises(TypeError, match="argument 'blob'"):
        cache.deserialize("not a buffer")
    assert set(trt.EngineInvalidityDiagnostics.__members__) >= {"UNSUPPORTED_CC", "VERSION_MISMATCH"}


def test_the_rtx_fake_is_removed_after_the_fixture():
    from trt_fake import FakeTensorRT

    assert not isinstance(sys.modules.get("tensorrt_rtx"), FakeTensorRT)


def test_without_tensorrt_rtx_the_fixture_skips_saying_why(pytestconfig, monkeypatch):
    from trt_surface import TENSORRT_RTX, Flavour, NotInstalled, installed_surface

    with pytest.raises(NotInstalled, match="no_such_bindings is missing"):
        installed_surface(Flavour("no_such_bindings", TENSORRT_RTX.extension, TENSORRT_RTX.module))
    plugin = pytestconfig.pluginmanager.get_plugin("trt_fixtures")
    monkeypatch.setattr(plugin, "_rtx_surface", [NotInstalled("tensorrt_rtx is not installed")])
    with pytest.raises(pytest.skip.Exception, match=r"^tensorrt_rtx is not installed \(pip install 'effedge\[rtx\]'"):
        plugin.load_rtx_surface()


# --- the runner -------------------------------------------------------------------------------------------------


def test_runs_with_a_runtime_cache_loaded_from_and_saved_beside_the_engine(rtx, cudart, tmp_path):
    _doubling_engine(rtx, cudart)
    engine = _engine_file(tmp_path)
    cache_file = runtime_cache_path(engine)
    assert cache_file.name == "model.fp16.engine.runtime.cache"
    cache_file.write_bytes(b"kernels-v1")
    loaded = []

    def deserialize(cache, blob):
        assert cudart.streams, "the runtime cache needs a current CUDA context"
        loaded.append(bytes(blob))
        return True

    rtx.set_handler("IRuntimeCache.deserialize", deserialize)
    rtx.set_return("IRuntimeCache.serialize", b"kernels-v2")
    with TensorRTRTXRunner(engine, manifest=_manifest(engine)) as runner:
        images = _images()
        np.testing.assert_array_equal(runner.infer({"images": images})["scores"], 2 * images)
        assert cache_file.read_bytes() == b"kernels-v1"  # written when the runner is done, not before
    assert loaded == [b"kernels-v1"]
    # one runtime config holds the cache that loaded the file; the context is created with it; that cache is saved
    [made] = rtx.calls_to("IRuntimeConfig.create_runtime_cache")
    [load] = rtx.calls_to("IRuntimeCache.deserialize")
    [attach] = rtx.calls_to("IRuntimeConfig.set_runtime_cache")
    [create] = rtx.calls_to("ICudaEngine.create_execution_context")
    [save] = rtx.calls_to("IRuntimeCache.serialize")
    config, cache = made.target, load.target
    assert attach.target is config and attach.args == (cache,) and save.target is cache
    assert create.kwargs == {"runtime_config": config}
    assert cache_file.read_bytes() == b"kernels-v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([engine.name, cache_file.name])  # no temp file
    assert runner.startup["runtime_cache"] == "loaded" and runner.notes == []
    assert isinstance(runner.startup["context_seconds"], float) and runner.startup["context_seconds"] >= 0
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_without_a_cache_the_kernels_are_compiled_and_kept(rtx, cudart, tmp_path):
    _doubling_engine(rtx, cudart)
    engine = _engine_file(tmp_path)
    rtx.set_return("IRuntimeCache.serialize", b"compiled-kernels")
    with TensorRTRTXRunner(engine, manifest=_manifest(engine)) as runner:
        runner.infer({"images": _images()})
    assert not rtx.calls_to("IRuntimeCache.deserialize")
    assert runner.startup["runtime_cache"] == "none"
    assert runtime_cache_path(engine).read_bytes() == b"compiled-kernels"


def test_a_rejected_cache_is_noted_and_replaced(rtx, cudart, tmp_path):
    """A cache from another GPU, driver or version: deserialize says False, the kernels are compiled again."""
    _doubling_engine(rtx, cudart)
    engine = _engine_file(tmp_path)
    runtime_cache_path(engine).write_bytes(b"from-another-gpu")
    rtx.set_return("IRuntimeCache.deserialize", False)
    rtx.set_return("IRuntimeCache.serialize", b"kernels-for-this-gpu")
    with TensorRTRTXRunner(engine, manifest=_manifest(engine)) as runner:
        runner.infer({"images": _images()})
    assert runner.startup["runtime_cache"] == "rejected"
    [note] = runner.notes
    assert "model.fp16.engine.runtime.cache was made for another GPU, driver or TensorRT-RTX" in note
    assert runtime_cache_path(engine).read_bytes() == b"kernels-for-this-gpu"


def test_an_unwritable_cache_is_a_note_not_a_failure(rtx, cudart, tmp_path, monkeypatch):
    import effedge.runtime.tensorrt_rtx as module

    def refuse(path, data):
        raise PermissionError(13, "Permission denied")

    _doubling_engine(rtx, cudart)
    engine = _engine_file(tmp_path)
    rtx.set_return("IRuntimeCache.serialize", b"kernels")
    monkeypatch.setattr(module, "atomic_write", refuse)
    with TensorRTRTXRunner(engine, manifest=_manifest(engine)) as runner:
        runner.infer({"images": _images()})
    [note] = runner.notes
    assert note.startswith("could not save the runtime cache") and "Permission denied" in note
    assert not runtime_cache_path(engine).exists()


def test_no_plugin_library_is_registered(rtx, cudart, tmp_path):
    """TensorRT-RTX has no plugins: the module's init_libnvinfer_plugins exists but must not be called."""
    _doubling_engine(rtx, cudart)
    assert callable(rtx.init_libnvinfer_plugins)
    engine = _engine_file(tmp_path)
    with TensorRTRTXRunner(engine, manifest=_manifest(engine)):
        pass
    assert rtx.calls_to("Runtime.deserialize_cuda_engine") and not rtx.calls_to("init_libnvinfer_plugins")


def test_an_invalid_plan_is_one_line_with_its_diagnostics(rtx, cudart, tmp_path):
    diagnostics = int(rtx.EngineInvalidityDiagnostics.UNSUPPORTED_CC) | int(
        rtx.EngineInvalidityDiagnostics.OLD_CUDA_DRIVER)
    rtx.set_return("Runtime.get_engine_validity", (rtx.EngineValidity.INVALID, diagnostics))
    engine = _engine_file(tmp_path)
    with pytest.raises(EffedgeError) as error:
        TensorRTRTXRunner(engine, manifest=_manifest(engine)).__enter__()
    message = str(error.value)
    assert message.startswith(f"model.fp16.engine cannot run on this machine: TensorRT-RTX {rtx.trt_version} "
                              "reports UNSUPPORTED_CC, OLD_CUDA_DRIVER; ")
    assert "update the NVIDIA driver" in message and "\n" not in message
    [validity] = rtx.calls_to("Runtime.get_engine_validity")
    assert bytes(validity.args[0]) == b"rtx-plan"
    assert not rtx.calls_to("Runtime.deserialize_cuda_engine")
    assert cudart.live()["streams"] == 0


@pytest.mark.parametrize("name, capability", [(b"NVIDIA H100 80GB HBM3", (9, 0)), (b"NVIDIA Orin", (8, 7))])
def test_an_unsupported_gpu_is_one_line_naming_the_supported_capabilities(rtx, monkeypatch, tmp_path, name,
                                                                           capability):
    """TensorRT-RTX refuses Hopper and Jetson Orin: said before anything is deserialized, engine entry or not."""
    FakeCudaRuntime(name=name, capability=capability).install(monkeypatch)
    engine = _engine_file(tmp_path)
    for manifest in (_manifest(engine), {}):
        with pytest.raises(EffedgeError) as error:
            TensorRTRTXRunner(engine, manifest=manifest).__enter__()
        assert str(error.value) == (
            "TensorRT-RTX engines run on compute capability 7.5, 8.0, 8.6, 8.9, 12.0, 12.1; this GPU "
            f"({name.decode()}) is {capability[0]}.{capability[1]}: build a full TensorRT engine on it instead "
            "(effedge build MODEL.onnx --backend tensorrt)")
        # Said to detect, eval and bench alike: the advice must be a command, not an option detect lacks (nor
        # bench --backend tensorrt, which refuses an RTX engine: a loop).
        for command in (["detect"], ["eval"], ["bench"]):
            check_suggestions(str(error.value), command)
    assert not rtx.calls_to("Runtime.get_engine_validity") and not rtx.calls_to("Runtime.deserialize_cuda_engine")


def test_an_engine_built_for_other_targets_is_refused(rtx, monkeypatch, tmp_path):
    cudart = FakeCudaRuntime(name=b"NVIDIA GeForce RTX 3090", capability=(8, 6)).install(monkeypatch)
    engine = _engine_file(tmp_path)
    with pytest.raises(EffedgeError, match=r"^the engine was built for compute capability 8.9, 12.0; this GPU "
                                           r"\(NVIDIA GeForce RTX 3090\) is 8.6: rebuild it with effedge build "
                                           r"--backend tensorrt-rtx --compute-capability 8.6$"):
        TensorRTRTXRunner(engine, manifest=_manifest(engine, compute_capabilities=["8.9", "12.0"])).__enter__()
    assert not rtx.calls_to("Runtime.deserialize_cuda_engine")
    _doubling_engine(rtx, cudart)
    with TensorRTRTXRunner(engine, manifest=_manifest(engine, compute_capabilities=["8.6", "8.9"])):
        pass  # one of its targets


def test_a_full_tensorrt_engine_is_not_run_by_tensorrt_rtx(rtx, cudart, tmp_path):
    engine = _engine_file(tmp_path)
    manifest = {"engines": {engine.name: {"backend": "tensorrt", "product": "TensorRT", "version": "10.13.3.9",
                                          "compute_capability": "8.9", "bytes": engine.stat().st_size}}}
    with pytest.raises(EffedgeError, match="^the engine was built with TensorRT 10.13.3.9, which TensorRT-RTX cannot "
                                           "run: use --backend tensorrt$"):
        TensorRTRTXRunner(engine, manifest=manifest).__enter__()
    assert not rtx.calls_to("Runtime.deserialize_cuda_engine")


@pytest.mark.parametrize("trt_fake", ["10.13.3.9"], indirect=True)
def test_an_rtx_engine_is_not_run_by_full_tensorrt(trt_fake, cudart, tmp_path):
    engine = _engine_file(tmp_path)
    with pytest.raises(EffedgeError, match="^the engine was built with TensorRT-RTX 1.7.1.116, which TensorRT cannot "
                                           "run: use --backend tensorrt-rtx$"):
        TensorRTRunner(engine, manifest=_manifest(engine)).__enter__()
    assert not trt_fake.calls_to("Runtime.deserialize_cuda_engine")


# --- the runner choice: Detector and bench ------------------------------------------------------------------


def test_the_engine_entry_chooses_the_runner(tmp_path):
    engine = _engine_file(tmp_path)
    assert engine_backend(_manifest(engine), engine) == "tensorrt-rtx"
    assert isinstance(engine_runner(engine, _manifest(engine)), TensorRTRTXRunner)
    full = {"engines": {engine.name: {"backend": "tensorrt", "bytes": engine.stat().st_size}}}
    for manifest in (full, {}, {"engines": {"model.int8.engine": _rtx_entry(engine)}}):  # another engine's entry
        assert engine_backend(manifest, engine) == "tensorrt"
        assert type(engine_runner(engine, manifest)) is TensorRTRunner
    assert isinstance(engine_runner(engine, {}, "tensorrt-rtx"), TensorRTRTXRunner)  # asked for explicitly


def test_the_detector_runs_an_rtx_engine_with_the_rtx_runner(rtx, cudart, tmp_path):
    from effedge.runtime.detector import Detector

    io = {"images": (rtx.TensorIOMode.INPUT, (1, 3, 32, 32)), "boxes": (rtx.TensorIOMode.OUTPUT, (1, 6, 4)),
          "scores": (rtx.TensorIOMode.OUTPUT, (1, 6, 3))}
    order = list(io)
    rtx.set_attr("ICudaEngine.num_io_tensors", len(io))
    rtx.set_handler("ICudaEngine.get_tensor_name", lambda engine, i: order[i])
    rtx.set_handler("ICudaEngine.get_tensor_mode", lambda engine, name: io[name][0])
    rtx.set_handler("ICudaEngine.get_tensor_shape", lambda engine, name: io[name][1])
    rtx.set_handler("ICudaEngine.get_tensor_dtype", lambda engine, name: rtx.DataType.FLOAT)
    rtx.set_handler("IExecutionContext.get_tensor_shape", lambda context, name: io[name][1])
    rtx.set_return("IRuntimeCache.serialize", b"kernels")
    engine = _engine_file(tmp_path)
    (tmp_path / "build.json").write_text(json.dumps(_manifest(engine)))
    with Detector(engine) as detector:
        assert isinstance(detector.runner, TensorRTRTXRunner)
        [detections] = detector([np.zeros((40, 50, 3), np.uint8)])
    assert len(detections) == 0  # all-zero scores
    assert rtx.calls_to("IExecutionContext.execute_async_v3")
    assert runtime_cache_path(engine).read_bytes() == b"kernels"


def test_bench_reports_the_first_run_apart(rtx, cudart, tmp_path):
    from effedge.bench.harness import BenchSettings
    from effedge.bench.targets import bench_one

    _doubling_engine(rtx, cudart)
    engine = _engine_file(tmp_path)
    runtime_cache_path(engine).write_bytes(b"stale")
    rtx.set_return("IRuntimeCache.deserialize", False)
    settings = BenchSettings(warmup_s=0, min_iterations=3, min_duration_s=0, batch=BATCH, energy=False)
    result = bench_one(engine, _manifest(engine), "tensorrt-rtx", settings)
    assert result["backend"] == "tensorrt-rtx" and result["iterations"] == 3
    assert result["compute_ms"]["median"] == cudart.gpu.kernel_ms  # CUDA events on the runner's stream (the GPU clock)
    assert len(rtx.calls_to("IExecutionContext.execute_async_v3")) == 1 + 3  # the first run, then the measured
    first = result["first_run"]
    assert first["runtime_cache"] == "rejected"
    assert {"load_seconds", "deserialize_seconds", "context_seconds", "first_iteration_ms"} <= set(first)
    assert all(isinstance(first[key], float) for key in ("load_seconds", "context_seconds", "first_iteration_ms"))
    assert any("runtime cache" in warning for warning in result["warnings"])
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_bench_auto_takes_the_backend_from_the_engine_entry(rtx, cudart, tmp_path):
    from effedge.cli import cli

    _doubling_engine(rtx, cudart)
    rtx.set_return("IRuntimeCache.serialize", b"kernels")
    engine = _engine_file(tmp_path)
    (tmp_path / "build.json").write_text(json.dumps(_manifest(engine)))
    result = CliRunner().invoke(cli, ["bench", str(engine), "--batch", str(BATCH), "--warmup", "0", "--duration",
                                      "0", "--iterations", "2", "--json"])
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)
    assert report["backend"] == "tensorrt-rtx" and report["first_run"]["runtime_cache"] == "none"
    text = CliRunner().invoke(cli, ["bench", str(engine), "--batch", str(BATCH), "--warmup", "0", "--duration", "0",
                                    "--iterations", "2"])
    assert text.exit_code == 0, text.output
    # the first bench saved the kernels beside the engine; the second starts from them
    assert "first run (not in the statistics): load " in text.output and "runtime cache loaded" in text.output
