"""Engines are checked against their own build.json entry (``engines[<file name>]``) before deserializing: two
engines in one folder are judged each by its entry, an entry that describes an earlier file or the old
single ``engine`` key is not used, and the entries ``effedge build`` really writes are the ones the check reads.
Full TensorRT through the checked fakes of each version (tests/trt_fake.py) and a fake CUDA runtime."""
import importlib.util
import json

import pytest
from cuda_fake import FakeCudaRuntime

from effedge.runtime.engine_manifest import check_engine_compatible, engine_entry
from effedge.runtime.tensorrt import TensorRTRunner
from effedge.errors import EffedgeError


@pytest.fixture
def orin(monkeypatch):
    """The Jetson the folder was copied to: compute capability 8.7."""
    return FakeCudaRuntime(name=b"NVIDIA Orin", capability=(8, 7)).install(monkeypatch)


def _engine(folder, name, plan):
    path = folder / name
    path.write_bytes(plan)
    return path


def _entry(path, version, compute_capability, **options):
    return {"backend": "tensorrt", "product": "TensorRT", "version": version, "compute_capability": compute_capability,
            "bytes": path.stat().st_size, "options": {"version_compatible": False, "hardware_compatible": False,
                                                      **options}}


def _deserialized(trt):
    return len(trt.calls_to("Runtime.deserialize_cuda_engine"))


def test_each_engine_is_checked_against_its_own_entry(trt_fake, orin, tmp_path):
    """A workstation build copied to a Jetson, where one engine was rebuilt with effedge build: that one runs,
    the other is refused naming the GPU it was built for."""
    version = trt_fake.__version__
    workstation = _engine(tmp_path, "model.fp16.engine", b"built on the workstation")
    rebuilt = _engine(tmp_path, "model.int8.engine", b"rebuilt on the Jetson")
    manifest = {"engines": {workstation.name: _entry(workstation, version, "8.9"),
                            rebuilt.name: _entry(rebuilt, version, "8.7")}}
    with TensorRTRunner(rebuilt, manifest=manifest):
        pass
    assert _deserialized(trt_fake) == 1
    with pytest.raises(EffedgeError, match=r"^the engine was built for a GPU of compute capability 8.9, this GPU "
                                           r"\(NVIDIA Orin\) is 8.7; rebuild it here \(effedge build\)$"):
        TensorRTRunner(workstation, manifest=manifest).__enter__()
    assert _deserialized(trt_fake) == 1  # refused before deserializing


def test_an_entry_of_an_earlier_file_is_not_used(trt_fake, orin, tmp_path):
    """The engine was replaced after build.json was written (rebuilt with trtexec): its size no longer matches
    the entry, which then says nothing about it."""
    engine = _engine(tmp_path, "model.fp16.engine", b"built on the workstation")
    manifest = {"engines": {engine.name: _entry(engine, trt_fake.__version__, "8.9")}}
    assert engine_entry(manifest, engine) is not None
    engine.write_bytes(b"rebuilt here by another tool, another size")
    assert engine_entry(manifest, engine) is None
    with TensorRTRunner(engine, manifest=manifest):
        pass
    assert _deserialized(trt_fake) == 1


def test_the_old_single_engine_key_is_not_read(trt_fake, orin, tmp_path):
    engine = _engine(tmp_path, "model.fp16.engine", b"plan")
    stale = {"engine": {"tensorrt": "8.5.2", "compute_capability": "8.9"}}  # before per-engine entries
    assert engine_entry(stale, engine) is None
    with TensorRTRunner(engine, manifest=stale):
        pass
    assert _deserialized(trt_fake) == 1


def test_version_and_hardware_compatible_engines_are_let_through(trt_fake, tmp_path):
    engine = _engine(tmp_path, "model.fp16.engine", b"plan")
    other = "8.6.1" if not trt_fake.__version__.startswith("8.") else "10.3.0"
    with pytest.raises(EffedgeError, match=f"built with TensorRT {other}, this machine has {trt_fake.__version__}"):
        check_engine_compatible(_entry(engine, other, "8.7"), trt_fake, "8.7")
    check_engine_compatible(_entry(engine, other, "8.7", version_compatible=True), trt_fake, "8.7")
    with pytest.raises(EffedgeError, match="compute capability 8.6, this GPU is 8.9"):
        check_engine_compatible(_entry(engine, trt_fake.__version__, "8.6"), trt_fake, "8.9")
    check_engine_compatible(_entry(engine, trt_fake.__version__, "8.6", hardware_compatible=True), trt_fake, "8.9")
    check_engine_compatible(None, trt_fake, "8.9")  # nothing known: nothing refused


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                    reason="TensorRT-RTX is not installed (pip install 'effedge[rtx]'): no real build to read")
def test_the_entries_effedge_build_writes_are_the_ones_checked(tmp_path):
    """Two real TensorRT-RTX builds into one folder (ahead of time, no GPU needed): each engine gets its own
    entry, and each is judged by it on a GPU of compute capability 8.6."""
    import onnx
    from onnx import helper

    from effedge.engine import import_trt
    from effedge.pipeline.compile import build_engine_file

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    for name, capability in (("for-ampere.engine", "8.6"), ("for-ada.engine", "8.9")):
        build_engine_file(tmp_path / "model.onnx", tmp_path / name, backend="tensorrt-rtx",
                          compute_capabilities=(capability,))
    manifest = json.loads((tmp_path / "build.json").read_text())
    trt = import_trt("tensorrt-rtx")
    ampere = engine_entry(manifest, tmp_path / "for-ampere.engine")
    ada = engine_entry(manifest, tmp_path / "for-ada.engine")
    assert ampere["compute_capabilities"] == ["8.6"] and ada["compute_capabilities"] == ["8.9"]
    check_engine_compatible(ampere, trt, "8.6", gpu_name="NVIDIA GeForce RTX 3090")
    with pytest.raises(EffedgeError, match=r"built for compute capability 8.9; this GPU \(NVIDIA GeForce RTX 3090\) "
                                           "is 8.6"):
        check_engine_compatible(ada, trt, "8.6", gpu_name="NVIDIA GeForce RTX 3090")


def _relu_onnx(path):
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("version_compatible", [True, False])
def test_a_version_compatible_build_loads_with_host_code_allowed(trt_fake, orin, tmp_path, version_compatible):
    """A --version-compatible plan carries its own runtime: TensorRT deserializes it only with
    Runtime.engine_host_code_allowed set (the fake refuses it otherwise, as TensorRT does). The runner reads
    from the engine's build.json entry that it is one, and allows host code for such plans only."""
    from effedge.io import read_manifest
    from effedge.pipeline.compile import build_engine_file

    report = build_engine_file(_relu_onnx(tmp_path / "model.onnx"), version_compatible=version_compatible)
    engine = tmp_path / report["file"]
    built = len(trt_fake.calls)
    with TensorRTRunner(engine, manifest=read_manifest(tmp_path)):
        pass
    order = [c.name for c in trt_fake.calls[built:]]
    assert order.count("Runtime.engine_host_code_allowed=") == (1 if version_compatible else 0)
    if version_compatible:
        assert order.index("Runtime.engine_host_code_allowed=") < order.index("Runtime.deserialize_cuda_engine")
        with pytest.raises(EffedgeError, match="is not a TensorRT .* engine"):  # without build.json: refused
            TensorRTRunner(engine, manifest={}).__enter__()
