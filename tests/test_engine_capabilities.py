"""The TensorRT capability table: one row per supported release, one-line refusals for the rest."""
import pytest

from effedge.engine import capabilities
from effedge.errors import EffedgeError


@pytest.mark.parametrize("backend, version, series", [
    ("tensorrt", "8.5.2.2", "8.5"), ("tensorrt", "8.6.1", "8.6"), ("tensorrt", "8.6.2", "8.6"), ("tensorrt", "10.3.0", "10.x"),
    ("tensorrt", "10.13.3.9", "10.x"), ("tensorrt", "11.4.0.106", "11.x"), ("tensorrt-rtx", "1.7.1.116", "RTX 1.x"),
])
def test_supported_releases(backend, version, series):
    assert capabilities(backend, version).series == series


def test_what_each_release_can_do():
    trt8, trt10, trt11 = (capabilities("tensorrt", v) for v in ("8.6.1", "10.13.3.9", "11.4.0.106"))
    rtx = capabilities("tensorrt-rtx", "1.7.1.116")
    assert trt8.explicit_batch_flag and not trt10.explicit_batch_flag and not trt11.explicit_batch_flag
    assert trt8.precision_flags and trt10.precision_flags and not trt11.precision_flags and not rtx.precision_flags
    assert not trt8.strongly_typed_flag and trt10.strongly_typed_flag
    assert trt11.always_strongly_typed and rtx.always_strongly_typed and not trt10.always_strongly_typed
    assert trt8.max_onnx_opset == 17
    # TensorRT-RTX: no plugins, no NMS runner, no timing cache, no DLA; builds for chosen GPUs ahead of time
    assert not (rtx.plugins or rtx.nms_layer or rtx.timing_cache or rtx.dla or rtx.calibrators)
    assert rtx.compute_capability_targets and rtx.runtime_cache
    assert all(c.plugins and c.nms_layer and c.timing_cache for c in (trt8, trt10, trt11))
    assert all(c.output_allocator for c in (trt8, trt10, trt11))  # the NMS layer's data-dependent outputs run


def test_8_5_lacks_what_8_6_added():
    """JetPack 5.1's TensorRT 8.5 has no builder_optimization_level, hardware_compatibility_level,
    VERSION_COMPATIBLE or engine_host_code_allowed: its row says so (8.6 and later have them)."""
    trt85 = capabilities("tensorrt", "8.5.2.2")
    assert not (trt85.optimization_level or trt85.hardware_compatibility or trt85.version_compatibility)
    for version in ("8.6.1", "10.3.0", "11.4.0.106"):
        row = capabilities("tensorrt", version)
        assert row.optimization_level and row.hardware_compatibility and row.version_compatibility
    assert (trt85.explicit_batch_flag, trt85.precision_flags, trt85.max_onnx_opset) == (True, True, 17)


def test_onnx_nms_is_refused_before_building_where_there_is_no_output_allocator():
    from dataclasses import replace

    from effedge.engine import check_nms

    without = replace(capabilities("tensorrt", "10.3.0"), output_allocator=False)
    with pytest.raises(EffedgeError, match=r"no IOutputAllocator .* \(--nms onnx\); use --nms efficientnms"):
        check_nms(without, "onnx")
    check_nms(capabilities("tensorrt", "10.3.0"), "onnx")  # the full releases run it


@pytest.mark.parametrize("backend, version, message", [
    ("tensorrt", "8.4.3", "TensorRT 8.4.3 is too old"),
    ("tensorrt", "7.1.3", "TensorRT 7.1.3 is too old"),
    ("tensorrt", "9.2.0", "TensorRT 9.2.0 is not supported"),
    ("tensorrt", "12.0.0", "TensorRT 12.0.0 is not supported"),
    ("tensorrt-rtx", "2.0.0", "TensorRT-RTX 2.0.0 is not supported"),
    ("tensorrt", "dev", "cannot read the TensorRT version"),
])
def test_unknown_or_old_releases_are_refused_in_one_line(backend, version, message):
    with pytest.raises(EffedgeError, match=message) as error:
        capabilities(backend, version)
    assert "\n" not in str(error.value)
