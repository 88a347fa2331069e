"""effedge's TensorRT runner against the real API surface of TensorRT 8.6.1, 10.3.0, 10.13.3.9 and
11.4.0.106 (the `trt_fake` fixture: every attribute, property and call is checked against that version's real
classes and signatures; tests/trt_fake.py). The builder's tests are in tests/test_engine_builder.py."""
import sys

import numpy as np
import pytest
from cuda_fake import FakePycuda
from trt_fixtures import declare_engine_io, engines_of

from effedge.runtime import tensorrt as backend
from effedge.runtime.tensorrt import TensorRTRunner
from effedge.errors import BackendUnavailable, EffedgeError

STATIC = (("images", (1, 3, 128, 128)),)


def names(calls):
    return [c[0] for c in calls]


def major(fake) -> int:
    return int(fake.__version__.split(".")[0])


# --- runtime -------------------------------------------------------------------------------------------


def _engine_io(trt, pycuda=None, dynamic=False):
    """images (N, 4) -> scores (N, 3) = 2 * images[:, :3]. With ``pycuda`` (a FakePycuda), execute_async_v3
    enqueues the arithmetic through its device memory, and fails, as TensorRT does, when the current CUDA
    context, the stream or the tensors' memory is not the context the engine was deserialized in."""
    io = {"images": (trt.TensorIOMode.INPUT, (-1 if dynamic else 2, 4)),
          "scores": (trt.TensorIOMode.OUTPUT, (-1 if dynamic else 2, 3))}
    declare_engine_io(trt, io)
    trt.set_handler("ICudaEngine.get_tensor_profile_shape", lambda engine, name, index: [(1, 4), (2, 4), (4, 4)])
    current = {}
    trt.set_handler("IExecutionContext.set_input_shape",
                    lambda context, name, shape: current.__setitem__("batch", tuple(shape)[0]) or True)
    trt.set_handler("IExecutionContext.get_tensor_shape",
                    lambda context, name: (current.get("batch", 2), io[name][1][1]))
    if pycuda is None:
        return io
    engines = engines_of(trt)
    engines.cuda = pycuda

    def execute(context, stream):
        address = {c.args[0]: c.args[1] for c in trt.calls_to("IExecutionContext.set_tensor_address")
                   if c.target is context}
        if engines.mismatch(context, stream, address.values()):
            return False  # TensorRT logs "invalid device context" / "invalid resource handle"
        rows = current.get("batch", 2)

        def kernel():
            images = pycuda.view(address["images"], rows * 16).view(np.float32).reshape(rows, 4)
            pycuda.view(address["scores"], rows * 12).view(np.float32)[:] = (2 * images[:, :3]).reshape(-1)

        pycuda.enqueue(stream, kernel)
        return True

    trt.set_handler("IExecutionContext.execute_async_v3", execute)
    return io


def test_runner_wires_buffers_and_execute_async_v3(trt_fake, tmp_path, monkeypatch):
    trt = trt_fake
    pycuda = FakePycuda()
    pycuda.install(monkeypatch)
    _engine_io(trt, pycuda, dynamic=True)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    images = np.arange(12, dtype=np.float32).reshape(3, 4)
    with TensorRTRunner(engine) as runner:
        out = runner.infer({"images": images})
    addresses = trt.calls_to("IExecutionContext.set_tensor_address")
    assert [c[1][0] for c in addresses] == ["images", "scores"]
    assert all(isinstance(c[1][1], int) for c in addresses)
    assert [tuple(c[1][1]) for c in trt.calls_to("IExecutionContext.set_input_shape")] == [(3, 4)]
    [execute] = trt.calls_to("IExecutionContext.execute_async_v3")
    assert execute[1] == (runner_stream_handle(pycuda),)
    np.testing.assert_array_equal(out["scores"], 2 * images[:, :3])
    assert pycuda.copies[:3] == ["htod", "dtoh", "sync"]  # (and the wait before freeing the buffers)
    assert all(a.freed for a in pycuda.allocations + pycuda.host_allocations)
    assert not [c for c in trt.calls if "execute_async_v2" in c[0]]


def runner_stream_handle(pycuda) -> int:
    [stream] = pycuda.streams
    return stream


def test_pycuda_runs_the_engine_in_the_context_tensorrt_uses(trt_fake, tmp_path, monkeypatch):
    """TensorRT (the CUDA runtime) deserializes into the current context, or GPU 0's primary one. pycuda makes
    no context by itself, and pycuda.autoinit makes a new one: buffers and the stream made there cannot be used
    with the engine. The runner makes the primary context current before deserializing, keeps everything in
    it, and leaves the context stack as it found it."""
    pycuda = FakePycuda()
    pycuda.install(monkeypatch)
    _engine_io(trt_fake, pycuda)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    images = np.ones((2, 4), np.float32)
    for _ in range(2):  # a second runner in the same process, after the first one released the context
        with TensorRTRunner(engine) as runner:
            np.testing.assert_array_equal(runner.infer({"images": images})["scores"], 2 * images[:, :3])
            [context] = set(engines_of(trt_fake).engine_contexts.values())
            assert context is pycuda.primary[0] and pycuda.current() is context
            assert {a.context for a in pycuda.allocations} == {context}
        assert pycuda.stack == [] and pycuda.primary[0].retained == 0
    assert len(pycuda.contexts) == 1  # no context besides the primary one was created


def test_the_fake_fails_work_across_contexts(trt_fake, tmp_path, monkeypatch):
    """The check above is worth something: buffers made under pycuda.autoinit's context make the fake's
    TensorRT fail the execution, as the real one does."""
    pycuda = FakePycuda()
    driver = pycuda.install(monkeypatch)
    _engine_io(trt_fake, pycuda)
    engine = trt_fake.Runtime(trt_fake.Logger()).deserialize_cuda_engine(b"plan")  # in the primary context
    context = engine.create_execution_context()
    import pycuda.autoinit  # noqa: F401  (a second context, now current)

    stream = driver.Stream()
    assert engines_of(trt_fake).mismatch(context, stream.handle, []) is not None
    assert context.execute_async_v3(stream.handle) is False


def test_runner_registers_the_plugins_before_deserializing(trt_fake, tmp_path, monkeypatch):
    """Full TensorRT keeps EfficientNMS & co. in libnvinfer_plugin: an engine using them deserializes only
    after init_libnvinfer_plugins registered them, with the runner's logger and the default namespace."""
    pycuda = FakePycuda()
    pycuda.install(monkeypatch)
    _engine_io(trt_fake, pycuda)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with TensorRTRunner(engine):
        pass
    order = names(trt_fake.calls)
    assert order.index("init_libnvinfer_plugins") < order.index("Runtime.deserialize_cuda_engine")
    [plugins] = trt_fake.calls_to("init_libnvinfer_plugins")
    [runtime] = trt_fake.calls_to("Runtime.__init__")
    assert plugins.args == (runtime.args[0], "")


def test_runner_reports_unregistrable_plugins(trt_fake, tmp_path, monkeypatch):
    FakePycuda().install(monkeypatch)
    trt_fake.set_return("init_libnvinfer_plugins", False)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(EffedgeError, match="could not register its plugin library"):
        TensorRTRunner(engine).__enter__()
    assert not trt_fake.calls_to("Runtime.deserialize_cuda_engine")


def test_cuda_graphs_on_pycuda_ask_for_cuda_python(trt_fake, tmp_path, monkeypatch):
    FakePycuda().install(monkeypatch)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(BackendUnavailable, match=r"CUDA graphs need cuda-python .*pip install cuda-python"):
        TensorRTRunner(engine, cuda_graph=True).__enter__()
    assert not trt_fake.calls_to("Runtime.deserialize_cuda_engine")


def test_runner_refuses_corrupt_engines(trt_fake, tmp_path, monkeypatch):
    FakePycuda().install(monkeypatch)
    trt_fake.set_return("Runtime.deserialize_cuda_engine", None)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00garbage")
    with pytest.raises(EffedgeError, match="is not a TensorRT .* engine"):
        TensorRTRunner(engine).__enter__()


def test_runner_checks_the_manifest_before_deserializing(trt_fake, tmp_path, monkeypatch):
    FakePycuda().install(monkeypatch)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    other = "8.6.1" if major(trt_fake) != 8 else "10.3.0"
    with pytest.raises(EffedgeError, match=f"built with TensorRT {other}, this machine has {trt_fake.__version__}"):
        TensorRTRunner(engine, manifest={"engines": {"model.engine": {"backend": "tensorrt", "version": other}}}
                       ).__enter__()
    with pytest.raises(EffedgeError, match=r"compute capability 7.2, this GPU \(Orin\) is 8.7"):
        TensorRTRunner(engine, manifest={"engines": {"model.engine": {
            "backend": "tensorrt", "version": trt_fake.__version__, "compute_capability": "7.2"}}}).__enter__()
    assert not trt_fake.calls_to("Runtime.deserialize_cuda_engine")


def test_numpy_types(trt_fake):
    assert backend.numpy_dtype(trt_fake.DataType.HALF) == np.float16
    assert backend.numpy_dtype(trt_fake.DataType.INT32) == np.int32


def test_runtime_side_imports_without_torch_or_onnx():
    """bench/build/run on a Jetson: only tensorrt + cuda-python + numpy (+ click, pyyaml, rich)."""
    import subprocess

    code = ("import sys; sys.modules.update({m: None for m in ('torch', 'onnx', 'onnxruntime', 'modelopt', "
            "'onnxsim', 'PIL')}); import effedge.cli, effedge.runtime.tensorrt, effedge.runtime.preprocess, "
            "effedge.runtime.nms, effedge.arch.anchors, effedge.provenance; from click.testing import CliRunner; "
            "r = CliRunner().invoke(effedge.cli.cli, ['build', '--help']); assert r.exit_code == 0, r.output; "
            "print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
