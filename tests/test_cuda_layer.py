"""effedge's CUDA layer (effedge/backends/cuda.py) and the TensorRT runner's data path on it, against a fake
cuda-python runtime (tests/cuda_fake.py, checked against the real one where cuda-bindings is installed)
and the checked TensorRT fake; and what doctor says about the GPU."""
import importlib.util
import inspect
import json
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from cuda_fake import FakeCudaRuntime, api_enums, api_functions, cudaError_t
from helpers import effedge_cli
from trt_fixtures import declare_engine_io, doubling_execute, nms_layer_execute

from effedge.runtime import cuda
from effedge.runtime.tensorrt import TensorRTRunner, gpu_compute_capability
from effedge.errors import BackendUnavailable, EffedgeError


@pytest.fixture
def cudart(monkeypatch):
    return FakeCudaRuntime().install(monkeypatch)


def _hide_bindings(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)


# --- the fake cannot drift from cuda-python ---------------------------------------------------------------


def _real_runtime():
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        pytest.skip("cuda-bindings is not installed (pip install cuda-python): the fake cannot be compared")
    from cuda.bindings import runtime

    return runtime


def test_fake_cudart_matches_the_real_module():
    real = _real_runtime()
    for name, function in api_functions().items():
        assert hasattr(real, name), f"cuda.bindings.runtime has no {name}"
        declared = getattr(real, name).__doc__.strip().splitlines()[0]
        inside = declared[declared.index("(") + 1: declared.rindex(")")].strip()
        real_count = len(inside.split(",")) if inside else 0
        fake_count = len(inspect.signature(function.__wrapped__).parameters) - 1  # self
        assert fake_count == real_count, f"{name}: the fake takes {fake_count} arguments, cuda-python {declared}"
    for enum in api_enums():
        real_enum = getattr(real, enum.__name__)
        for member in enum:
            assert int(getattr(real_enum, member.name)) == member.value, f"{enum.__name__}.{member.name}"


def test_no_driver_is_reported_as_such_by_the_real_bindings():
    """On a machine without an NVIDIA driver, real cuda-python says so in one line (doctor's reason)."""
    _real_runtime()
    try:
        info = cuda.device_info(0)
    except cuda.NoCudaDevice as exc:
        assert str(exc).startswith(cuda.NO_GPU) and "\n" not in str(exc)
    else:
        assert re.fullmatch(r"\d+\.\d+", info.compute_capability) and info.total_memory > 0


# --- loading, device facts, errors ------------------------------------------------------------------------


def test_cuda_python_is_preferred(cudart):
    info = cuda.device_info(0)
    assert info.library == "cuda-python 12.6.0+fake"
    assert (info.name, info.compute_capability, info.total_memory) == ("NVIDIA Orin", "8.7", 8 << 30)
    assert gpu_compute_capability() == "8.7"


def test_without_bindings_the_fix_is_named(monkeypatch):
    _hide_bindings(monkeypatch)
    with pytest.raises(BackendUnavailable, match=r"pip install cuda-python"):
        cuda.load()
    assert gpu_compute_capability() is None


@pytest.mark.parametrize("error, driver, runtime, reason", [
    (cudaError_t.cudaErrorInsufficientDriver, 0, 12060, "no NVIDIA driver found"),
    (cudaError_t.cudaErrorInsufficientDriver, 12020, 13000, r"driver supports CUDA 12\.2, older than the CUDA 13\.0 "
                                                             r"of cuda-python .*pip install 'cuda-python==12\.\*'"),
    (cudaError_t.cudaErrorNoDevice, 12060, 12060, "the NVIDIA driver is installed but sees no CUDA GPU"),
])
def test_no_driver_or_gpu_says_why(monkeypatch, error, driver, runtime, reason):
    FakeCudaRuntime(device_error=error, driver=driver, runtime=runtime).install(monkeypatch)
    with pytest.raises(cuda.NoCudaDevice, match=f"^no CUDA GPU usable: .*{reason}"):
        cuda.device_info(0)
    assert gpu_compute_capability() is None  # absence is not a failure


def test_a_missing_gpu_index_is_no_device(monkeypatch):
    FakeCudaRuntime(devices=0).install(monkeypatch)
    with pytest.raises(cuda.NoCudaDevice, match="GPU 0 requested, the driver sees 0"):
        cuda.device_info(0)


def test_real_failures_are_not_swallowed(cudart):
    """Other CUDA errors are failures: they raise, naming the call and the CUDA error."""
    cudart.fail("cudaGetDeviceProperties", cudaError_t.cudaErrorInvalidValue)
    with pytest.raises(EffedgeError, match=r"cudaGetDeviceProperties failed: cudaErrorInvalidValue "
                                           r"\(invalid argument\)") as error:
        gpu_compute_capability()
    assert not isinstance(error.value, BackendUnavailable)
    cudart.fail("cudaMalloc", cudaError_t.cudaErrorMemoryAllocation)
    with pytest.raises(EffedgeError, match=r"cudaMalloc\(4096 bytes\) failed: cudaErrorMemoryAllocation "
                                           r"\(out of memory\)"):
        cuda.DeviceBuffer(4096)


# --- buffers, copies, events, graphs ------------------------------------------------------------------------


def test_copies_move_the_requested_bytes(cudart):
    stream = cuda.Stream()
    source, target = cuda.PinnedBuffer(8, np.float32), cuda.PinnedBuffer(8, np.float32)
    device = cuda.DeviceBuffer(32)
    source.array[:] = np.arange(8, dtype=np.float32)
    cuda.copy_htod_async(device, source.array, 12, stream)  # the first 3 floats only
    cuda.copy_dtoh_async(target.array, device, 32, stream)
    assert np.isnan(target.array).all() and cudart.copied == []  # queued: nothing has moved yet
    stream.synchronize()
    nan = np.nan  # the rest of the device buffer was never written: poison
    np.testing.assert_array_equal(target.array, [0, 1, 2, nan, nan, nan, nan, nan])
    assert cudart.copied == [("htod", 12), ("dtoh", 32)]
    with pytest.raises(ValueError, match="copy of 36 bytes"):
        cuda.copy_htod_async(device, source.array, 36, stream)
    for resource in (source, target, device):
        resource.free()
    stream.close()
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_events_time_the_work_between_them(cudart):
    stream = cuda.Stream()
    begin, end = cuda.Event(), cuda.Event()
    begin.record(stream)
    cudart.enqueue(stream.handle, lambda: None)  # a kernel: kernel_ms of GPU time
    end.record(stream)
    error, _ = cudart.cudaEventElapsedTime(begin.native, end.native)
    assert error == cudaError_t.cudaErrorNotReady  # the GPU has not got there yet
    assert end.elapsed_ms(begin) == cudart.gpu.kernel_ms  # elapsed_ms waits for the end event
    begin.close(), end.close(), stream.close()
    assert cudart.live()["events"] == 0


def test_graph_replays_the_captured_work(cudart):
    stream = cuda.Stream()
    host = cuda.PinnedBuffer(4, np.int32)
    device = cuda.DeviceBuffer(16)
    graph = cuda.CudaGraph.capture(stream, lambda: cuda.copy_htod_async(device, host.array, 16, stream))
    assert cudart.copied == []  # captured, not run
    for value in (1, 2):
        host.array[:] = value
        graph.launch(stream)
        stream.synchronize()
        assert (cudart.view(device.address, 16).view(np.int32) == value).all()
    graph.destroy()
    assert cudart.live()["graphs"] == cudart.live()["graph_execs"] == 0


def test_failed_capture_ends_the_capture_and_raises(cudart):
    stream = cuda.Stream()

    def failing_work():
        assert cudart.is_capturing(stream.handle)
        raise EffedgeError("enqueue failed")

    with pytest.raises(EffedgeError, match="enqueue failed"):
        cuda.CudaGraph.capture(stream, failing_work)
    assert not cudart.is_capturing(stream.handle) and len(cudart.calls_to("cudaStreamEndCapture")) == 1
    assert cudart.live()["graphs"] == 0  # the partial graph is destroyed
    stream.synchronize()  # the stream is usable again


# --- the TensorRT runner's data path ------------------------------------------------------------------------

MAX_BATCH = 8


def _doubling_engine(trt, cudart, *, fail_in_capture=False):
    """An engine images (N, 4) -> scores (N, 4) = 2 * images, N dynamic up to MAX_BATCH; execute_async_v3
    enqueues the arithmetic on the stream through device memory (so a CUDA graph captures it)."""
    batch = {}
    declare_engine_io(trt, {"images": (trt.TensorIOMode.INPUT, (-1, 4)), "scores": (trt.TensorIOMode.OUTPUT, (-1, 4))})
    trt.set_handler("ICudaEngine.get_tensor_profile_shape",
                    lambda engine, name, index: [(1, 4), (4, 4), (MAX_BATCH, 4)])
    trt.set_handler("IExecutionContext.set_input_shape",
                    lambda context, name, shape: batch.__setitem__("n", tuple(shape)[0]) or True)
    trt.set_handler("IExecutionContext.get_tensor_shape", lambda context, name: (batch["n"], 4))
    doubling_execute(trt, cudart, lambda: batch["n"], fail_in_capture=fail_in_capture)


def _engine_file(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"plan")
    return path


def _images(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 4)).astype(np.float32)


def test_dynamic_engine_copies_only_the_current_batch(trt_fake, cudart, tmp_path):
    _doubling_engine(trt_fake, cudart)
    with TensorRTRunner(_engine_file(tmp_path)) as runner:
        images = _images(2)
        out = runner.infer({"images": images})
    np.testing.assert_array_equal(out["scores"], 2 * images)
    allocated = [args[0] for args in cudart.calls_to("cudaMalloc")]
    assert allocated == [MAX_BATCH * 4 * 4] * 2  # buffers sized for the profile's largest batch
    assert cudart.copied == [("htod", 2 * 4 * 4), ("dtoh", 2 * 4 * 4)]  # 2/8 of them move
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_cuda_graph_is_recaptured_on_a_shape_change_and_destroyed_at_exit(trt_fake, cudart, tmp_path):
    _doubling_engine(trt_fake, cudart)
    with TensorRTRunner(_engine_file(tmp_path), cuda_graph=True) as runner:
        for step, batch in enumerate((2, 2, 4)):
            images = _images(batch, seed=step)
            np.testing.assert_array_equal(runner.infer({"images": images})["scores"], 2 * images)
            if step == 1:  # same shape: the graph is replayed, not captured again
                assert len(cudart.calls_to("cudaStreamBeginCapture")) == 1
                assert len(cudart.calls_to("cudaGraphLaunch")) == 2
        first_graph = cudart.calls_to("cudaGraphDestroy")
        assert len(first_graph) == 1 and len(cudart.calls_to("cudaGraphExecDestroy")) == 1
        assert cudart.live()["graphs"] == cudart.live()["graph_execs"] == 1  # only the batch-4 graph
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_a_failed_enqueue_during_capture_raises_and_ends_the_capture(trt_fake, cudart, tmp_path):
    _doubling_engine(trt_fake, cudart, fail_in_capture=True)
    with TensorRTRunner(_engine_file(tmp_path), cuda_graph=True) as runner:
        with pytest.raises(EffedgeError, match="execute_async_v3 failed during CUDA graph capture"):
            runner.infer({"images": _images(2)})
        assert not cudart.captures and len(cudart.calls_to("cudaStreamEndCapture")) == 1
        assert cudart.live()["graphs"] == 0
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_runner_without_a_gpu_says_why_before_deserializing(trt_fake, monkeypatch, tmp_path):
    FakeCudaRuntime(device_error=cudaError_t.cudaErrorInsufficientDriver, driver=0).install(monkeypatch)
    with pytest.raises(cuda.NoCudaDevice, match="no NVIDIA driver found"):
        TensorRTRunner(_engine_file(tmp_path)).__enter__()
    assert not trt_fake.calls_to("Runtime.deserialize_cuda_engine")


@pytest.mark.parametrize("transfers, cuda_graph", [(True, False), (False, True)])
def test_bench_times_the_runner_on_its_stream(trt_fake, cudart, tmp_path, transfers, cuda_graph):
    from effedge.bench.harness import BenchSettings
    from effedge.bench.targets import bench_one

    _doubling_engine(trt_fake, cudart)
    settings = BenchSettings(warmup_s=0, min_iterations=3, min_duration_s=0, batch=2, cuda_graph=cuda_graph,
                             transfers=transfers, energy=False)
    result = bench_one(_engine_file(tmp_path), {}, "tensorrt", settings)
    assert result["iterations"] == 3
    assert result["compute_ms"]["median"] == cudart.gpu.kernel_ms  # events around the launch: the kernel's time
    moved = [label for label, nbytes in cudart.copied if nbytes == 2 * 4 * 4]
    assert len(moved) == len(cudart.copied)  # the batch's bytes, never the whole buffers
    if transfers:  # inputs once before the loop, then both ways on the first run and every iteration
        assert moved == ["htod"] + ["htod", "dtoh"] * (1 + 3)
        assert result["h2d_ms"]["median"] == result["d2h_ms"]["median"] == cudart.gpu.copy_ms
    else:
        assert moved == ["htod"] and "h2d_ms" not in result
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_bench_latency_waits_for_the_gpu(trt_fake, cudart, tmp_path, monkeypatch):
    """The host latency of an iteration spans its GPU work: the host clock stops only after the stream is
    synchronized. (The fake's GPU time passes only when the host waits, and counts on its host clock: a latency
    taken before the wait would be shorter than the GPU's own H2D + compute + D2H.)"""
    import time

    from effedge.bench.harness import BenchSettings
    from effedge.bench.targets import bench_one

    _doubling_engine(trt_fake, cudart)
    monkeypatch.setattr(time, "perf_counter", cudart.host_clock)
    settings = BenchSettings(warmup_s=0, min_iterations=3, min_duration_s=0, batch=2, energy=False)
    result = bench_one(_engine_file(tmp_path), {}, "tensorrt", settings)
    gpu_ms = result["h2d_ms"]["min"] + result["compute_ms"]["min"] + result["d2h_ms"]["min"]
    assert gpu_ms == 2 * cudart.gpu.copy_ms + cudart.gpu.kernel_ms
    assert result["latency_ms"]["min"] >= gpu_ms
    assert result["first_run"]["first_iteration_ms"] >= gpu_ms


def test_results_are_copies_that_outlive_the_next_inference_and_the_runner(trt_fake, cudart, tmp_path):
    """infer() returns arrays of its own: the next inference reuses the page-locked buffers, and deactivation
    frees them (the fake poisons freed and reused memory)."""
    _doubling_engine(trt_fake, cudart)
    first, second = _images(2, seed=1), _images(2, seed=2)
    with TensorRTRunner(_engine_file(tmp_path)) as runner:
        kept = runner.infer({"images": first})["scores"]
        np.testing.assert_array_equal(runner.infer({"images": second})["scores"], 2 * second)
        np.testing.assert_array_equal(kept, 2 * first)
    np.testing.assert_array_equal(kept, 2 * first)
    with TensorRTRunner(_engine_file(tmp_path)) as runner:  # reuses the freed blocks: they come back poisoned
        assert len(cudart.freed) < 4
        np.testing.assert_array_equal(runner.infer({"images": second})["scores"], 2 * second)
    np.testing.assert_array_equal(kept, 2 * first)


def test_freed_and_new_memory_is_poison(cudart):
    host = cuda.PinnedBuffer(4, np.float32)
    assert np.isnan(host.array).all()  # never written: garbage, not zeros
    host.array[:] = 1.0
    stale = host.array
    host.free()
    assert np.isnan(stale).all()  # a view kept past free() reads garbage
    again = cuda.PinnedBuffer(4, np.float32)  # the same block again, poisoned
    assert again.array.ctypes.data == stale.ctypes.data and np.isnan(again.array).all()
    again.free()


# --- outputs of data-dependent shape (TensorRT's NMS layer, --nms onnx) -------------------------------------

NMS_INPUT = (1, 32, 32, 3)  # uint8 NHWC, as compiled with --input-format uint8
CANDIDATES = 12  # the fake NMS looks at the first 12 input bytes: each above 127 is a detection


def _nms_engine(trt, cudart):
    """An engine with the ONNX NonMaxSuppression tail: images -> selected_indices [M, 3], detection_boxes [M, 4],
    detection_scores [M], M decided by the data (the first CANDIDATES bytes above 127; anchor a gets the box
    (a, a, a + 8, a + 8), score value / 255, class a % 3)."""
    index_type = "INT64" if "INT64" in trt.DataType.__members__ else "INT32"  # 8.6 has no INT64 tensors
    declare_engine_io(trt, {"images": (trt.TensorIOMode.INPUT, NMS_INPUT),
                            "selected_indices": (trt.TensorIOMode.OUTPUT, (-1, 3)),
                            "detection_boxes": (trt.TensorIOMode.OUTPUT, (-1, 4)),
                            "detection_scores": (trt.TensorIOMode.OUTPUT, (-1,))},
                      {"images": "UINT8", "selected_indices": index_type})
    trt.set_handler("IExecutionContext.get_tensor_shape", lambda context, name: {
        "images": NMS_INPUT, "selected_indices": (-1, 3), "detection_boxes": (-1, 4), "detection_scores": (-1,)}[name])
    index_dtype = np.int64 if index_type == "INT64" else np.int32

    def detect(images):
        anchors = np.flatnonzero(images.reshape(-1)[:CANDIDATES] > 127)
        return {"selected_indices": np.stack([np.zeros_like(anchors), anchors % 3, anchors], 1).astype(index_dtype),
                "detection_boxes": np.stack([anchors, anchors, anchors + 8, anchors + 8], 1).astype(np.float32),
                "detection_scores": (images.reshape(-1)[anchors] / 255).astype(np.float32)}

    nms_layer_execute(trt, cudart, NMS_INPUT, np.uint8, detect)
    return detect


def _nms_image(bright: list[int]) -> np.ndarray:
    image = np.zeros(NMS_INPUT[1:], np.uint8)
    image.reshape(-1)[bright] = 200
    return image


def test_outputs_of_data_dependent_shape_run_through_an_output_allocator(trt_fake, cudart, tmp_path):
    """The NMS layer's outputs have no size until the engine ran: the runner gives each an IOutputAllocator,
    copies back as many rows as TensorRT reported, and keeps up as that number grows and shrinks."""
    detect = _nms_engine(trt_fake, cudart)
    with TensorRTRunner(_engine_file(tmp_path)) as runner:
        assert {info.name: info.shape for info in runner.output_info()}["selected_indices"] == (-1, 3)
        for bright in ([1, 4], [0, 2, 5, 7, 9, 11], [3], []):
            images = _nms_image(bright)[None]
            outputs = runner.infer({"images": images})
            expected = detect(images)
            assert set(outputs) == set(expected)
            for name, array in expected.items():
                np.testing.assert_array_equal(outputs[name], array)
                assert outputs[name].dtype == array.dtype
    allocators = [c.args[0] for c in trt_fake.calls_to("IExecutionContext.set_output_allocator")]
    assert sorted(allocators) == ["detection_boxes", "detection_scores", "selected_indices"]
    assert cudart.live() == {"memory": 0, "streams": 0, "events": 0, "graphs": 0, "graph_execs": 0}


def test_the_detector_reads_the_nms_layer_tail(trt_fake, cudart, tmp_path):
    from effedge.runtime import Detector

    _nms_engine(trt_fake, cudart)
    with Detector(_engine_file(tmp_path), score_threshold=0.3) as detector:
        assert detector.kind == "onnx_nms"
        first, second = detector([_nms_image([0, 4, 8]), _nms_image([5])])
    # anchors 0, 4, 8 -> class a % 3, box (a, a, a + 8, a + 8) in model pixels (the 32x32 image is not rescaled)
    assert sorted(first.classes.tolist()) == [0, 1, 2] and len(second) == 1
    np.testing.assert_array_equal(second.boxes, [[5, 5, 13, 13]])
    assert second.classes.tolist() == [2] and second.scores.tolist() == [np.float32(200 / 255)]


def test_bench_runs_the_nms_layer_tail(trt_fake, cudart, tmp_path):
    from effedge.bench.harness import BenchSettings
    from effedge.bench.targets import bench_one

    _nms_engine(trt_fake, cudart)
    settings = BenchSettings(warmup_s=0, min_iterations=3, min_duration_s=0, batch=1, energy=False)
    result = bench_one(_engine_file(tmp_path), {}, "tensorrt", settings)
    assert result["iterations"] == 3 and result["d2h_ms"]["median"] > 0


def test_cuda_graphs_refuse_outputs_of_data_dependent_shape(trt_fake, cudart, tmp_path):
    _nms_engine(trt_fake, cudart)
    with TensorRTRunner(_engine_file(tmp_path), cuda_graph=True) as runner:
        with pytest.raises(EffedgeError, match="data-dependent shape .* cannot be captured in a CUDA graph"):
            runner.infer({"images": _nms_image([1])[None]})


# --- doctor -------------------------------------------------------------------------------------------------


def test_doctor_says_why_there_is_no_gpu(monkeypatch):
    from effedge.cli import cli

    FakeCudaRuntime(device_error=cudaError_t.cudaErrorInsufficientDriver, driver=0).install(monkeypatch)
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "GPU: none — no CUDA GPU usable: no NVIDIA driver found" in result.output
    report = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).output)
    assert report["gpu"] is None and "no NVIDIA driver found" in report["gpu_reason"]


def test_doctor_finds_the_gpu_without_pycuda(monkeypatch, cudart):
    from effedge.pipeline.doctor import diagnose

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    report = diagnose()
    assert report["gpu"].startswith("NVIDIA Orin (compute capability 8.7, 8.0 GiB, via cuda-python")
    assert report["compute_capability"] == "8.7" and report["gpu_reason"] == ""


def test_doctor_on_this_machine_names_the_gpu_or_the_reason():
    result = effedge_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert bool(report["gpu"]) != bool(report["gpu_reason"])  # exactly one: the GPU, or why there is none
