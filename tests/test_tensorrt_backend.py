"""effedge's TensorRT runner against the real API surface of TensorRT 8.6.1, 10.3.0, 10.13.3.9 and
11.4.0.106 (the `trt_fake` fixture: every attribute, property and call is checked against that version's real
classes and signatures; tests/trt_fake.py). The builder's tests are in tests/test_engine_builder.py."""
import sys
import types

import numpy as np
import pytest

from trt_fixtures import declare_engine_io

from effedge.runtime import tensorrt as backend
from effedge.runtime.tensorrt import TensorRTRunner
from effedge.errors import BackendUnavailable, EffedgeError

STATIC = (("images", (1, 3, 128, 128)),)


def names(calls):
    return [c[0] for c in calls]


def major(fake) -> int:
    return int(fake.__version__.split(".")[0])


# --- runtime -------------------------------------------------------------------------------------------


class FakePycuda:
    """pycuda.driver double: host arrays stand in for device memory, so copies are real. Installing it
    hides cuda-python, so effedge's CUDA layer takes its pycuda path."""

    def __init__(self):
        self.copies = []
        self.allocations = []
        self.host_allocations = []

    def install(self, monkeypatch):
        driver = types.ModuleType("pycuda.driver")
        fake = self

        class Allocation:
            def __init__(self, nbytes):
                self.buffer = np.zeros(nbytes, np.uint8)
                fake.allocations.append(self)

            def __int__(self):
                return 0x10000 + 0x1000 * fake.allocations.index(self)

            def free(self):
                self.freed = True

        class HostAllocation:  # what a page-locked array's .base is
            def __init__(self, count, dtype):
                self.memory = np.zeros(count, dtype)
                self.__array_interface__ = self.memory.__array_interface__
                fake.host_allocations.append(self)

            def free(self):
                self.freed = True

        def pagelocked_empty(count, dtype):
            return np.asarray(HostAllocation(count, dtype))

        def device(address):
            return next(a for a in fake.allocations if int(a) == address).buffer

        class Stream:
            handle = 0xABC

            def synchronize(self):
                fake.copies.append("sync")

        class Device:
            count = staticmethod(lambda: 1)

            def __init__(self, index):
                pass

            compute_capability = staticmethod(lambda: (8, 7))
            name = staticmethod(lambda: "Orin")
            total_memory = staticmethod(lambda: 8 << 30)

        driver.Error = type("Error", (Exception,), {})
        driver.init = lambda: None
        driver.Device = Device
        driver.pagelocked_empty = pagelocked_empty
        driver.mem_alloc = Allocation
        driver.Stream = Stream
        driver.memcpy_htod_async = lambda dev, host, stream: (
            device(dev).__setitem__(slice(0, host.nbytes), host.view(np.uint8)), fake.copies.append("htod"))
        driver.memcpy_dtoh_async = lambda host, dev, stream: (
            host.view(np.uint8).__setitem__(slice(None), device(dev)[: host.nbytes]), fake.copies.append("dtoh"))
        package = types.ModuleType("pycuda")
        package.driver = driver
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        monkeypatch.setitem(sys.modules, "pycuda.autoinit", types.ModuleType("pycuda.autoinit"))
        return driver


def _engine_io(trt, dynamic=False):
    io = {"images": (trt.TensorIOMode.INPUT, (-1 if dynamic else 2, 4)),
          "scores": (trt.TensorIOMode.OUTPUT, (-1 if dynamic else 2, 3))}
    declare_engine_io(trt, io)
    trt.set_handler("ICudaEngine.get_tensor_profile_shape", lambda engine, name, index: [(1, 4), (2, 4), (4, 4)])
    current = {}
    trt.set_handler("IExecutionContext.set_input_shape",
                    lambda context, name, shape: current.__setitem__("batch", tuple(shape)[0]) or True)
    trt.set_handler("IExecutionContext.get_tensor_shape",
                    lambda context, name: (current.get("batch", 2), io[name][1][1]))
    return io


def test_runner_wires_buffers_and_execute_async_v3(trt_fake, tmp_path, monkeypatch):
    trt = trt_fake
    pycuda = FakePycuda()
    pycuda.install(monkeypatch)
    _engine_io(trt, dynamic=True)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with TensorRTRunner(engine) as runner:
        out = runner.infer({"images": np.ones((3, 4), np.float32)})
    addresses = trt.calls_to("IExecutionContext.set_tensor_address")
    assert [c[1][0] for c in addresses] == ["images", "scores"]
    assert all(isinstance(c[1][1], int) for c in addresses)
    assert [tuple(c[1][1]) for c in trt.calls_to("IExecutionContext.set_input_shape")] == [(3, 4)]
    [execute] = trt.calls_to("IExecutionContext.execute_async_v3")
    assert execute[1] == (0xABC,)
    assert out["scores"].shape == (3, 3)
    assert pycuda.copies == ["htod", "dtoh", "sync"]
    assert all(getattr(a, "freed", False) for a in pycuda.allocations + pycuda.host_allocations)
    assert not [c for c in trt.calls if "execute_async_v2" in c[0]]


def test_runner_registers_the_plugins_before_deserializing(trt_fake, tmp_path, monkeypatch):
    """Full TensorRT keeps EfficientNMS & co. in libnvinfer_plugin: an engine using them deserializes only
    after init_libnvinfer_plugins registered them, with the runner's logger and the default namespace."""
    FakePycuda().install(monkeypatch)
    _engine_io(trt_fake)
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
