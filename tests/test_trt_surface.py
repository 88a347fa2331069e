"""The TensorRT API harness itself: extracted surfaces show the known version differences, and the fake
enforces them (missing names, call signatures, argument/property types, read-only properties)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import trt_surface
from trt_fake import Call, FakeTensorRT

pytestmark = pytest.mark.trt_api

ALL = set(trt_surface.TRT_VERSIONS)
V8, V10, V11 = {"8.6.1"}, {"10.3.0", "10.13.3.9"}, {"11.4.0.106"}

# attribute path (from the module) -> versions that have it; from the project's design notes
VERSION_FACTS = {
    "BuilderFlag.FP16": V8 | V10,
    "BuilderFlag.INT8": V8 | V10,
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS": V8 | V10,
    "IInt8EntropyCalibrator2": V8 | V10,
    "IBuilderConfig.int8_calibrator": V8 | V10,
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": V8 | V10,
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": V10 | V11,
    "IExecutionContext.execute_async_v2": V8,
    "Builder.build_engine": V8,
    "IBuilderConfig.max_workspace_size": V8,
    "Builder.build_serialized_network": ALL,
    "IExecutionContext.execute_async_v3": ALL,
    "IExecutionContext.set_tensor_address": ALL,
    "MemoryPoolType.WORKSPACE": ALL,
    "IBuilderConfig.create_timing_cache": ALL,
    "IBuilderConfig.set_timing_cache": ALL,
    "ITimingCache": ALL,
    "IProfiler": ALL,
    "EngineInspector": ALL,
    "IBuilderConfig.builder_optimization_level": ALL,
    "ParserError.node_name": V10 | V11,
}


def resolve(trt: FakeTensorRT, path: str):
    value = trt
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("path", list(VERSION_FACTS))
def test_version_facts(trt_fake, path):
    owner, _, name = path.rpartition(".")
    present = trt_fake.trt_version in VERSION_FACTS[path]
    assert hasattr(resolve(trt_fake, owner) if owner else trt_fake, name) == present  # feature detection works
    if present:
        resolve(trt_fake, path)
    else:
        with pytest.raises(AttributeError, match=f"^tensorrt {trt_fake.trt_version} has no attribute '{path}'$"):
            resolve(trt_fake, path)


def test_fixture_installs_the_fake(trt_fake):
    import tensorrt

    assert tensorrt is trt_fake
    assert tensorrt.__version__ == trt_fake.trt_version


def test_fake_is_removed_after_the_fixture():
    # Runs after (or before) the parametrized tests; either way no fake may be left behind.
    assert not isinstance(sys.modules.get("tensorrt"), FakeTensorRT)


def _builder(trt):
    return trt.Builder(trt.Logger(trt.Logger.WARNING))


def test_instance_members_follow_the_version(trt_fake):
    trt = trt_fake
    builder = _builder(trt)
    config = builder.create_builder_config()
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"plan")
    context = engine.create_execution_context()
    if trt.trt_version in V8:
        config.max_workspace_size = 1 << 20
        assert ("IBuilderConfig.max_workspace_size=", (1 << 20,), {}) in trt.calls
        assert context.execute_async_v2([0, 0], 0) is True
        assert isinstance(builder.build_engine(builder.create_network(0), config), trt.ICudaEngine)
    else:
        with pytest.raises(AttributeError, match=f"tensorrt {trt.trt_version} has no attribute "
                                                 "'IBuilderConfig.max_workspace_size'"):
            config.max_workspace_size = 1 << 20
        with pytest.raises(AttributeError, match="'IExecutionContext.execute_async_v2'"):
            context.execute_async_v2
    if trt.trt_version in V11:
        with pytest.raises(AttributeError, match="'IBuilderConfig.int8_calibrator'"):
            config.int8_calibrator = None


def test_rejects_wrong_keyword(trt_fake):
    builder = _builder(trt_fake)
    with pytest.raises(TypeError, match="unexpected keyword argument 'flag'"):
        builder.create_network(flag=0)
    builder.create_network(flags=0)


def test_rejects_wrong_argument_count(trt_fake):
    trt = trt_fake
    builder = _builder(trt)
    config = builder.create_builder_config()
    with pytest.raises(TypeError, match="missing required argument 'flag'"):
        config.set_flag()
    with pytest.raises(TypeError, match="takes at most 0 positional argument"):
        builder.create_builder_config(1)
    with pytest.raises(TypeError, match="missing required argument"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)
    with pytest.raises(TypeError, match="missing required argument 'logger'"):
        trt.Builder()


def test_rejects_wrong_types(trt_fake):
    trt = trt_fake
    builder = _builder(trt)
    config = builder.create_builder_config()
    with pytest.raises(TypeError, match="argument 'flag': expected tensorrt.BuilderFlag, got "
                                        r"<MemoryPoolType.WORKSPACE: \d+> \(tensorrt.MemoryPoolType\)"):
        config.set_flag(trt.MemoryPoolType.WORKSPACE)
    with pytest.raises(TypeError, match="expected tensorrt.BuilderFlag"):
        config.set_flag(0)  # pybind11 enums do not convert from int
    with pytest.raises(TypeError, match="expected tensorrt.ILogger"):
        trt.Builder("logger")
    with pytest.raises(TypeError, match="expected tensorrt.INetworkDefinition"):
        trt.OnnxParser(trt.Logger(), builder.create_network(0))
    context = trt.make("IExecutionContext")
    with pytest.raises(TypeError, match="argument 'memory'"):
        context.set_tensor_address("images", "0x1000")
    with pytest.raises(TypeError, match="IBuilderConfig.builder_optimization_level = '3'"):
        config.builder_optimization_level = "3"
    with pytest.raises(TypeError, match="argument 'min': expected tensorrt.Dims, got .*item 1: expected "
                                        r"(int|typing.SupportsInt), got '3'"):
        builder.create_optimization_profile().set_shape("images", (1, "3"), (1, 3), (1, 3))
    # enums are ints where an int is expected, as with pybind11
    builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
                                    if trt.trt_version not in V8 else trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))


def test_rejects_read_only_and_unknown_properties(trt_fake):
    trt = trt_fake
    config = _builder(trt).create_builder_config()
    with pytest.raises(AttributeError, match="property 'IBuilderConfig.num_optimization_profiles' is read-only"):
        config.num_optimization_profiles = 2
    with pytest.raises(AttributeError, match="property 'ICudaEngine.num_io_tensors' is read-only"):
        trt.make("ICudaEngine").num_io_tensors = 3
    with pytest.raises(AttributeError, match=f"tensorrt {trt.trt_version} has no attribute 'IBuilderConfig.no_such'"):
        config.no_such = 1
    with pytest.raises(AttributeError, match="'IBuilderConfig.set_flag' is a method"):
        config.set_flag = None
    with pytest.raises(TypeError, match="No constructor defined"):
        trt.IBuilderConfig()


def test_records_calls(trt_fake):
    trt = trt_fake
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pool_size=1 << 30)
    config.builder_optimization_level = 5
    assert trt.calls == [
        ("Logger.__init__", (trt.Logger.WARNING,), {}),
        ("Builder.__init__", (logger,), {}),
        ("Builder.create_builder_config", (), {}),
        ("IBuilderConfig.set_flag", (trt.BuilderFlag.GPU_FALLBACK,), {}),
        ("IBuilderConfig.set_memory_pool_limit", (trt.MemoryPoolType.WORKSPACE,), {"pool_size": 1 << 30}),
        ("IBuilderConfig.builder_optimization_level=", (5,), {}),
    ]
    assert all(isinstance(call, Call) for call in trt.calls)
    assert trt.calls_to("IBuilderConfig.set_flag")[0].target is config
    assert config.builder_optimization_level == 5


def test_return_values_follow_annotations(trt_fake):
    trt = FakeTensorRT(trt_fake.surface)  # the bare fake (the fixture's also builds and loads plans: FakeEngines)
    builder = _builder(trt)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    assert isinstance(network, trt.INetworkDefinition)
    assert isinstance(config, trt.IBuilderConfig)
    assert trt.OnnxParser(network, trt.Logger()).parse_from_file("model.onnx") is True
    plan = builder.build_serialized_network(network, config)
    assert isinstance(plan, trt.IHostMemory) and bytes(plan) == b"" and len(memoryview(plan)) == 0
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan)
    assert isinstance(engine, trt.ICudaEngine)
    assert engine.num_io_tensors == 0 and engine.get_tensor_name(0) == ""
    assert engine.get_tensor_mode("x") in trt.TensorIOMode.__members__.values()
    assert tuple(engine.get_tensor_shape("x")) == ()
    assert isinstance(engine.create_engine_inspector(), trt.EngineInspector)
    assert engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON) == ""
    assert isinstance(engine.create_execution_context(), trt.IExecutionContext)
    assert config.get_timing_cache() is not None and bytes(config.create_timing_cache(b"").serialize()) == b""
    assert trt.volume((2, 3, 4)) == 24 and trt.DataType.HALF.itemsize == 2
    with trt.Builder(trt.Logger()) as entered:
        assert isinstance(entered, trt.Builder)


def test_overrides(trt_fake):
    trt = trt_fake
    builder = _builder(trt)
    trt.set_return("Builder.build_serialized_network", b"plan-bytes")
    plan = builder.build_serialized_network(builder.create_network(0), builder.create_builder_config())
    assert bytes(plan) == b"plan-bytes" and plan.nbytes == 10
    engine = trt.make("ICudaEngine")
    other = trt.make("ICudaEngine")
    trt.set_attr("ICudaEngine.num_io_tensors", 2)
    trt.set_attr("ICudaEngine.num_io_tensors", 1, instance=other)
    assert (engine.num_io_tensors, other.num_io_tensors) == (2, 1)
    trt.set_handler("ICudaEngine.get_tensor_name", lambda eng, index: ["images", "boxes"][index])
    assert [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)] == ["images", "boxes"]
    trt.set_return("ICudaEngine.get_tensor_shape", (1, 3, 512, 512))
    shape = engine.get_tensor_shape("images")
    assert isinstance(shape, trt.Dims) and shape == (1, 3, 512, 512) and shape[0] == 1 and len(shape) == 4
    trt.set_return("ICudaEngine.get_tensor_mode", trt.TensorIOMode.OUTPUT, instance=other)
    assert other.get_tensor_mode("boxes") is trt.TensorIOMode.OUTPUT
    trt.set_return("OnnxParser.parse_from_file", False)
    assert trt.OnnxParser(builder.create_network(0), trt.Logger()).parse_from_file("m.onnx") is False
    trt.set_return("Builder.build_serialized_network", None)  # TensorRT's failure value
    assert builder.build_serialized_network(builder.create_network(0), builder.create_builder_config()) is None
    with pytest.raises(TypeError, match="gives tensorrt.IBuilderConfig"):
        trt.set_return("Builder.create_builder_config", 3)
    with pytest.raises(AttributeError, match="no class 'IBuilder' \\(did you mean 'Builder'\\?\\)"):
        trt.set_return("IBuilder.build_serialized_network", b"")
    with pytest.raises(AttributeError, match="'Builder.no_such'"):
        trt.set_return("Builder.no_such", 1)
    with pytest.raises(ValueError, match="use set_return"):
        trt.set_attr("Builder.create_network", 1)


def test_logger_and_profiler_subclasses(trt_fake):
    trt = trt_fake
    messages = []

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            messages.append((severity, msg))

    class Profiler(trt.IProfiler):
        def report_layer_time(self, layer_name, ms):
            pass

    logger = Logger()
    logger.log(trt.ILogger.Severity.ERROR, "boom")  # the user's method, not recorded
    assert messages == [(trt.ILogger.ERROR, "boom")]
    context = trt.Runtime(logger).deserialize_cuda_engine(b"").create_execution_context()
    context.profiler = Profiler()
    assert isinstance(context.profiler, Profiler)

    class NoBaseInit(trt.ILogger):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match=r"tensorrt.ILogger.__init__\(\) must be called when overriding __init__"):
        NoBaseInit()
    with pytest.raises(TypeError, match="overrides tensorrt .* IProfiler.report_layer_time"):
        class BadProfiler(trt.IProfiler):
            def report_layer_time(self):
                pass


def test_calibrator_subclass(trt_fake):
    trt = trt_fake
    if trt.trt_version in V11:
        with pytest.raises(AttributeError, match="'IInt8EntropyCalibrator2'"):
            trt.IInt8EntropyCalibrator2
        return

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, batches):
            super().__init__()
            self.batches = list(batches)
            self.cache = None

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return [0x1000] if self.batches.pop() else None

        def read_calibration_cache(self):
            return self.cache

        def write_calibration_cache(self, cache):
            self.cache = bytes(cache)

    calibrator = Calibrator([1, 2])
    config = _builder(trt).create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    assert config.int8_calibrator is calibrator
    assert calibrator.get_batch(["images"]) == [0x1000] and calibrator.batches == [1]
    assert ("IBuilderConfig.int8_calibrator=", (calibrator,), {}) in trt.calls
    with pytest.raises(TypeError, match="expected tensorrt.IInt8Calibrator"):
        config.int8_calibrator = trt.Logger()


def test_surface_signatures(trt_fake):
    """The parsed pybind11 signatures that effedge's TensorRT backend relies on."""
    classes = trt_fake.surface["classes"]

    def params(cls, name):
        overloads = classes[cls]["members"][name]["overloads"]
        return [[(p["name"], p["has_default"]) for p in o["params"]] for o in overloads]

    assert params("Builder", "create_network") == [[("flags", True)]]
    # 10.13 added an overload with kernel_text
    assert params("Builder", "build_serialized_network")[0] == [("network", False), ("config", False)]
    assert params("IBuilderConfig", "set_memory_pool_limit") == [[("pool", False), ("pool_size", False)]]
    assert params("IOptimizationProfile", "set_shape") == [[("input", False), ("min", False), ("opt", False),
                                                             ("max", False)]]
    assert params("IExecutionContext", "execute_async_v3") == [[("stream_handle", False)]]
    returns = classes["ICudaEngine"]["members"]["create_engine_inspector"]["overloads"][0]["returns"]
    assert returns == "tensorrt.EngineInspector"  # 8.6's docstring says nvinfer1::IEngineInspector
    assert classes["IHostMemory"]["buffer"]


def test_unreachable_index_is_a_skip_reason(tmp_path, monkeypatch, pytestconfig):
    monkeypatch.setenv("EFFEDGE_TEST_CACHE", str(tmp_path))
    # A closed local port as the only index: pip fails the way it does offline.
    for name, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple/", "PIP_EXTRA_INDEX_URL": "",
                        "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": "/dev/null"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(trt_surface.WheelsUnavailable, match="tensorrt-bindings==8.6.1"):
        trt_surface.surface("8.6.1")
    plugin = pytestconfig.pluginmanager.get_plugin("trt_fixtures")
    monkeypatch.setitem(plugin._surfaces, "0.0.0", trt_surface.WheelsUnavailable("no network"))
    with pytest.raises(pytest.skip.Exception, match="TensorRT binding wheels not downloadable: no network"):
        plugin.load_surface("0.0.0")


@pytest.mark.parametrize("trt_fake", ["11.4.0.106"], indirect=True)
def test_stubs_really_load_the_bindings(trt_fake):
    """The extractor imports the real module (not a stand-in): Builder() fails only in the nullptr factory."""
    root = trt_surface.cache_root() / trt_fake.trt_version
    site = next(root.glob("site-*"))
    stubs = sorted(next(root.glob("stubs-*")).glob("lib*.so.*"))
    script = ("import ctypes, sys\n"
              f"[ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL) for p in {[str(s) for s in stubs]!r}]\n"
              f"sys.path.insert(0, {str(site)!r})\n"
              "import tensorrt_bindings as trt\n"
              "try:\n    trt.Builder(trt.Logger())\nexcept TypeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True,
                         env={"LD_BIND_NOW": "1"}, check=True).stdout
    assert "factory function returned nullptr" in out
