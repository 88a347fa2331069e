"""effedge's engine builder against the real API surface of TensorRT 8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106
(the `trt_fake` fixture: every attribute, property and call is checked against that version's real classes and
signatures; tests/trt_fake.py). Real TensorRT-RTX builds are in tests/test_rtx_build.py."""
import json
import sys

import pytest
from trt_fake import FakeTensorRT
from trt_fixtures import FakeEngines, load_surface

from effedge.engine import BuildOptions, GraphInfo, build_engine
from effedge.errors import EffedgeError

STATIC = (("images", (1, 3, 128, 128)),)
DYNAMIC = (("images", (None, 3, 128, 128)),)


def major(fake) -> int:
    return int(fake.__version__.split(".")[0])


def names(calls):
    return [c[0] for c in calls]


def _build(fake, tmp_path, precision="fp32", inputs=STATIC, **options):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    fake.set_return("EngineInspector.get_engine_information", json.dumps({"Layers": ["conv"]}))
    report = build_engine(onnx_path, tmp_path / "model.engine", GraphInfo(17, precision, inputs),
                          BuildOptions(**options))
    return report


def _plan(tmp_path) -> dict:
    """What the fake builder serialized into the engine file: the network and config it was given."""
    return FakeEngines.read((tmp_path / "model.engine").read_bytes())


def _set_flags(fake):
    return [c[1][0].name for c in fake.calls_to("IBuilderConfig.set_flag")]


def _network_flags(fake):
    [call] = fake.calls_to("Builder.create_network")
    return call[1][0] if call[1] else call[2].get("flags", 0)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "mixed"])
def test_network_and_precision_flags_per_version(trt_fake, tmp_path, precision):
    report = _build(trt_fake, tmp_path, precision)
    flags, network = _set_flags(trt_fake), _network_flags(trt_fake)
    trt = trt_fake
    if major(trt) == 8:  # explicit batch, weakly typed: the graph's precisions need the builder flags
        assert network == 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        expected = {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"], "mixed": ["FP16", "INT8"]}[precision]
        assert [f for f in flags if f in ("FP16", "INT8")] == expected
    elif major(trt) == 10:  # strongly typed when the graph carries its precision; never the flags
        strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        assert network == (0 if precision == "fp32" else strongly)
        assert not {"FP16", "INT8"} & set(flags)
    else:  # 11: always strongly typed, the flags and calibrators do not exist
        assert network == 0 and not {"FP16", "INT8"} & set(flags)
    assert not [c for c in trt.calls if "int8_calibrator" in c[0]]
    assert (report["product"], report["version"]) == ("TensorRT", trt.__version__)
    plan = _plan(tmp_path)  # the engine was built from this network, with these flags, from model.onnx
    assert plan["network_flags"] == network and plan["builder_flags"] == flags
    assert plan["onnx"] == [str(tmp_path / "model.onnx")] and plan["profiles"] == []
    assert report["bytes"] == (tmp_path / "model.engine").stat().st_size
    assert json.loads((tmp_path / "model.layers.json").read_text()) == {"Layers": ["conv"]}
    assert (report["layers"]["layers"], report["layers"]["reformat_layers"]) == (1, 0)
    assert (tmp_path / "model.build.log").exists()


def test_workspace_level_profiling_and_timing_cache(trt_fake, tmp_path):
    cache = tmp_path / "trt.timing"
    cache.write_bytes(b"previous-cache")
    trt_fake.set_return("ITimingCache.serialize", b"updated-cache")
    _build(trt_fake, tmp_path, "fp16", workspace_mb=512, optimization_level=5, timing_cache=cache)
    trt = trt_fake
    [limit] = trt.calls_to("IBuilderConfig.set_memory_pool_limit")
    assert limit[1] == (trt.MemoryPoolType.WORKSPACE, 512 << 20)
    assert trt.calls_to("IBuilderConfig.builder_optimization_level=")[0][1] == (5,)
    assert trt.calls_to("IBuilderConfig.profiling_verbosity=")[0][1] == (trt.ProfilingVerbosity.DETAILED,)
    assert bytes(trt.calls_to("IBuilderConfig.create_timing_cache")[0][1][0]) == b"previous-cache"
    assert len(trt.calls_to("IBuilderConfig.set_timing_cache")) == 1
    order = names(trt.calls)
    assert order.index("IBuilderConfig.set_timing_cache") < order.index("Builder.build_serialized_network")
    assert cache.read_bytes() == b"updated-cache"  # reused by the next build
    plan = _plan(tmp_path)
    assert plan["properties"]["builder_optimization_level"] == 5
    assert plan["properties"]["profiling_verbosity"] == "DETAILED"
    assert plan["memory_pools"] == {"WORKSPACE": 512 << 20}


def test_plugins_are_registered_before_parsing(trt_fake, tmp_path):
    """EfficientNMS_TRT nodes resolve only once the plugin library registered them (as trtexec does)."""
    _build(trt_fake, tmp_path, "fp16")
    order = names(trt_fake.calls)
    assert order.index("init_libnvinfer_plugins") < order.index("OnnxParser.parse_from_file")
    [call] = trt_fake.calls_to("init_libnvinfer_plugins")
    assert call[1][1] == ""  # the default namespace


def test_dynamic_batch_without_a_profile_is_refused(trt_fake, tmp_path):
    with pytest.raises(EffedgeError, match="dynamic batch dimension; give --dynamic-batch"):
        _build(trt_fake, tmp_path, "fp16", inputs=DYNAMIC)
    assert not trt_fake.calls_to("Builder.build_serialized_network")


def test_nms_tails_build_where_the_version_has_them_and_are_refused_where_not(trt_fake, tmp_path):
    from effedge.engine import capabilities, check_nms

    _build(trt_fake, tmp_path, "fp16")  # stages the fake's return values
    onnx_path = tmp_path / "model.onnx"
    for nms in ("efficientnms", "onnx"):  # full TensorRT has the plugin and the NMS layer: the build goes ahead
        before = len(trt_fake.calls_to("Builder.build_serialized_network"))
        build_engine(onnx_path, tmp_path / "model.engine", GraphInfo(17, "fp16", STATIC, nms))
        assert len(trt_fake.calls_to("Builder.build_serialized_network")) == before + 1
        with pytest.raises(EffedgeError, match="TensorRT-RTX"):  # TensorRT-RTX has neither
            check_nms(capabilities("tensorrt-rtx", "1.7.1.116"), nms)


def test_dynamic_batch_gets_an_optimization_profile(trt_fake, tmp_path):
    _build(trt_fake, tmp_path, "fp16", inputs=DYNAMIC, batch=(1, 4, 8))
    [shape] = trt_fake.calls_to("IOptimizationProfile.set_shape")
    assert shape[1][0] == "images"
    assert [tuple(d) for d in shape[1][1:]] == [(1, 3, 128, 128), (4, 3, 128, 128), (8, 3, 128, 128)]
    assert len(trt_fake.calls_to("IBuilderConfig.add_optimization_profile")) == 1
    assert _plan(tmp_path)["profiles"] == [{"images": [[1, 3, 128, 128], [4, 3, 128, 128], [8, 3, 128, 128]]}]


@pytest.mark.parametrize("batch", [(0, 1, 4), (2, 1, 4), (1, 8, 4), (-1, 2, 4)])
def test_an_impossible_batch_profile_is_refused_before_building(trt_fake, tmp_path, batch):
    with pytest.raises(EffedgeError, match=r"--dynamic-batch .*: the profile must be 1 <= MIN <= OPT <= MAX") as error:
        _build(trt_fake, tmp_path, "fp16", inputs=DYNAMIC, batch=batch)
    assert "\n" not in str(error.value)
    assert not trt_fake.calls_to("Builder.__init__") and not list(tmp_path.glob("model.*.*")) + list(
        tmp_path.glob("*.engine"))


def test_a_batch_profile_for_a_static_graph_is_refused(trt_fake, tmp_path):
    """The option would otherwise be dropped silently and a batch-1 engine written."""
    with pytest.raises(EffedgeError, match=r"needs a graph with a dynamic batch dimension, this one has a static "
                                           r"batch of 1; re-export it with --dynamic-batch"):
        _build(trt_fake, tmp_path, "fp16", inputs=STATIC, batch=(1, 4, 8))
    assert not trt_fake.calls_to("Builder.__init__") and not (tmp_path / "model.engine").exists()


def test_a_profile_tensorrt_rejects_stops_the_build(trt_fake, tmp_path):
    """add_optimization_profile returns -1 for a profile TensorRT finds invalid: refused, not built without it."""
    trt_fake.set_return("IBuilderConfig.add_optimization_profile", -1)
    with pytest.raises(EffedgeError, match=r"refused the optimization profile --dynamic-batch 1:4:8 for model.onnx"):
        _build(trt_fake, tmp_path, "fp16", inputs=DYNAMIC, batch=(1, 4, 8))
    assert not trt_fake.calls_to("Builder.build_serialized_network") and not (tmp_path / "model.engine").exists()


@pytest.fixture
def trt85(monkeypatch):
    """TensorRT 8.5.2 (JetPack 5.1): 8.6's API minus what 8.6 added. No 8.5 binding wheel exists, so this is the
    8.6.1 surface under 8.5's version: the build must refuse 8.6's options before touching the API at all."""
    fake = FakeTensorRT(load_surface("8.6.1"))
    fake.__version__ = "8.5.2.2"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


@pytest.mark.parametrize("option, value, flag", [("optimization_level", 3, "--opt-level"),
                                                 ("hardware_compatible", True, "--hardware-compatible"),
                                                 ("version_compatible", True, "--version-compatible")])
def test_options_from_8_6_are_refused_on_8_5(trt85, tmp_path, option, value, flag):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    with pytest.raises(EffedgeError, match=f"^{flag} needs TensorRT 8.6 or newer, TensorRT 8.5.2.2 does not have it; "
                                           f"drop {flag}$"):
        build_engine(onnx_path, tmp_path / "model.engine", GraphInfo(17, "fp16", STATIC), BuildOptions(**{option: value}))
    assert not trt85.calls_to("Builder.__init__") and not (tmp_path / "model.engine").exists()


def test_dla_with_gpu_fallback(trt_fake, tmp_path):
    trt = trt_fake
    trt.set_attr("Builder.num_DLA_cores", 2)
    _build(trt, tmp_path, "int8", dla_core=1)
    assert trt.calls_to("IBuilderConfig.default_device_type=")[0][1] == (trt.DeviceType.DLA,)
    assert trt.calls_to("IBuilderConfig.DLA_core=")[0][1] == (1,)
    assert "GPU_FALLBACK" in _set_flags(trt)


@pytest.mark.parametrize("cores, precision, inputs, message", [
    (0, "int8", STATIC, "has no DLA cores"),
    (2, "fp32", STATIC, "DLA runs fp16 or int8 only"),
    (2, "fp16", DYNAMIC, "DLA needs static shapes"),
])
def test_dla_misuse_is_one_clear_error(trt_fake, tmp_path, cores, precision, inputs, message):
    trt_fake.set_attr("Builder.num_DLA_cores", cores)
    with pytest.raises(EffedgeError, match=message):
        _build(trt_fake, tmp_path, precision, inputs=inputs, dla_core=0)
    assert not trt_fake.calls_to("Builder.build_serialized_network")


def test_compatibility_options(trt_fake, tmp_path):
    report = _build(trt_fake, tmp_path, "fp16", version_compatible=True, hardware_compatible=True)
    # the layer report deserializes the version-compatible plan: only with host code allowed
    assert report["layers"]["layers"] == 1 and trt_fake.calls_to("Runtime.engine_host_code_allowed=")
    assert "VERSION_COMPATIBLE" in _set_flags(trt_fake)
    assert trt_fake.calls_to("IBuilderConfig.hardware_compatibility_level=")[0][1] == (
        trt_fake.HardwareCompatibilityLevel.AMPERE_PLUS,)
    plan = _plan(tmp_path)
    assert "VERSION_COMPATIBLE" in plan["builder_flags"]
    assert plan["properties"]["hardware_compatibility_level"] == "AMPERE_PLUS"


def test_parser_errors_name_the_node(trt_fake, tmp_path):
    trt = trt_fake
    trt.set_return("OnnxParser.parse_from_file", False)
    trt.set_attr("OnnxParser.num_errors", 1)
    trt.set_return("ParserError.node", 42)
    trt.set_return("ParserError.desc", "unsupported attribute")
    if major(trt) >= 10:
        trt.set_return("ParserError.node_name", "/model/head/Conv")
        trt.set_return("ParserError.node_operator", "Conv")
    with pytest.raises(EffedgeError) as error:
        _build(trt, tmp_path)
    text = str(error.value)
    assert "cannot parse model.onnx" in text and "node 42" in text and "unsupported attribute" in text
    if major(trt) >= 10:
        assert "'/model/head/Conv' (Conv)" in text


def test_failed_build_reports_the_log(trt_fake, tmp_path):
    trt_fake.set_return("Builder.build_serialized_network", None)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    with pytest.raises(EffedgeError, match="could not build the engine"):
        build_engine(onnx_path, tmp_path / "model.engine", GraphInfo(17, "fp32", STATIC))
    assert not (tmp_path / "model.engine").exists()


def test_opset_newer_than_the_parser(trt_fake, tmp_path):
    opset = {8: 18, 10: 21, 11: 23}[major(trt_fake)]
    with pytest.raises(EffedgeError, match=f"opset {opset}, TensorRT .* parses up to"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", GraphInfo(opset, "fp32", STATIC))


def test_graph_info_from_manifest_matches_the_onnx(tmp_path):
    """`effedge build` on a device without the onnx package reads the graph facts from build.json."""
    from effedge.export.onnx_export import ExportOptions, export

    manifest = export("d0", tmp_path, options=ExportOptions(image_size=128, dynamic_batch=(1, 2, 4)))
    from_file = GraphInfo.from_onnx(tmp_path / "model.sim.onnx")
    assert GraphInfo.from_manifest(manifest, "model.sim.onnx") == from_file
    assert from_file.inputs == (("images", (None, 3, 128, 128)),) and from_file.precision == "fp32"
