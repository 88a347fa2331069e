import math

import pytest

from effedge.arch import scaling
from effedge.errors import VariantError

# Published tables (Tan & Le 2019; Tan, Pang & Le 2020).
PAPER_EFFICIENTNET = {  # width, depth, resolution
    "b0": (1.0, 1.0, 224), "b1": (1.0, 1.1, 240), "b2": (1.1, 1.2, 260), "b3": (1.2, 1.4, 300),
    "b4": (1.4, 1.8, 380), "b5": (1.6, 2.2, 456), "b6": (1.8, 2.6, 528), "b7": (2.0, 3.1, 600),
}
PAPER_EFFICIENTDET = {  # input, backbone, BiFPN channels, BiFPN layers, head layers, max level
    "d0": (512, "b0", 64, 3, 3, 7), "d1": (640, "b1", 88, 4, 3, 7), "d2": (768, "b2", 112, 5, 3, 7),
    "d3": (896, "b3", 160, 6, 4, 7), "d4": (1024, "b4", 224, 7, 4, 7), "d5": (1280, "b5", 288, 7, 4, 7),
    "d6": (1280, "b6", 384, 8, 5, 7), "d7": (1536, "b6", 384, 8, 5, 7), "d7x": (1536, "b7", 384, 8, 5, 8),
}


@pytest.mark.parametrize("name", PAPER_EFFICIENTNET)
def test_named_efficientnets_reproduce_the_paper_table(name):
    spec = scaling.resolve(name)
    assert (spec.width, spec.depth, spec.resolution) == PAPER_EFFICIENTNET[name]


@pytest.mark.parametrize("name", PAPER_EFFICIENTDET)
def test_named_efficientdets_reproduce_the_paper_table(name):
    spec = scaling.resolve(name)
    size, backbone, channels, layers, heads, max_level = PAPER_EFFICIENTDET[name]
    assert (spec.image_size, spec.backbone.name, spec.fpn_channels, spec.fpn_layers, spec.head_layers,
            spec.max_level) == (size, backbone, channels, layers, heads, max_level)
    assert spec.fusion == ("sum" if name in ("d6", "d7", "d7x") else "fast_normalized")
    assert spec.image_size % spec.largest_stride == 0


def test_b0_base_network_and_rounding():
    b0 = scaling.resolve("b0")
    assert [(s.repeats, s.kernel, s.stride, s.out_channels) for s in b0.stages] == [
        (1, 3, 1, 16), (2, 3, 2, 24), (2, 5, 2, 40), (3, 3, 2, 80), (3, 5, 1, 112), (4, 5, 2, 192), (1, 3, 1, 320)]
    b4 = scaling.resolve("b4")  # width 1.4, depth 1.8: channels to multiples of 8, repeats ceil
    assert b4.stem_channels == 48 and b4.head_channels == 1792
    assert [s.repeats for s in b4.stages] == [2, 4, 4, 6, 6, 8, 2]
    assert [s.out_channels for s in b4.stages] == [24, 32, 56, 112, 160, 272, 448]


def test_make_divisible_never_drops_more_than_ten_percent():
    assert scaling.make_divisible(16 * 1.1) == 16  # 17.6 -> 16 (9 % below)
    assert scaling.make_divisible(20) == 24  # 16 would be 20 % below
    for value in (8.1, 13.7, 99.9, 1234.5):
        rounded = scaling.make_divisible(value)
        assert rounded % 8 == 0 and rounded >= 0.9 * value


def test_custom_phi_follows_the_formulas():
    spec = scaling.resolve(1.5)
    assert spec.name == "phi1.5"
    assert spec.backbone.width == pytest.approx(1.1**1.5)
    assert spec.backbone.depth == pytest.approx(1.2**1.5)
    assert spec.image_size == 768  # 512 + 128·1.5 = 704, nearest multiple of 128
    assert spec.fpn_channels == scaling.make_divisible(64 * 1.35**1.5) == 104
    assert spec.fpn_layers == math.ceil(3 + 1.5)
    assert spec.head_layers == 3
    assert scaling.resolve(6.5).fusion == "sum" and scaling.resolve(5).fusion == "fast_normalized"
    assert scaling.efficientnet_for_phi(1).resolution == 256  # 224·1.15 = 257.6 -> multiple of 32
    assert scaling.resolve("phi2") == scaling.resolve(2.0) == scaling.resolve("2")


def test_integer_phi_is_near_the_named_variant():
    for phi in range(7):
        custom, named = scaling.resolve(float(phi)), scaling.resolve(f"d{phi}")
        assert custom.image_size == named.image_size or phi == 5  # D5 (1280) departs from 512+128φ
        assert abs(custom.fpn_channels - named.fpn_channels) / named.fpn_channels < 0.08
        assert custom.head_layers == named.head_layers


@pytest.mark.parametrize("bad, message", [
    ("d8", "did you mean d7x?"), ("b9", "did you mean b7?"), ("efficientdet_d9", "did you mean d7x?"),
    ("dO", "did you mean d0?"), (-1, "out of range"), (7.5, "out of range"), ("nan", "out of range"),
    ("", "unknown variant"), (True, "unknown variant"), ("lite5", "did you mean lite4?"),
    ("d-lite9", "did you mean d-lite4?"),
    # effdet's efficientdet_lite0 is another (untrained) config: not taken for tf_efficientdet_lite0
    ("efficientdet_lite0", "not EfficientDet-Lite; use d-lite0"),
])
def test_bad_variants_get_a_clear_error(bad, message):
    with pytest.raises(VariantError, match=message):
        scaling.resolve(bad)


def test_aliases_of_reference_names():
    assert scaling.resolve("tf_efficientdet_d7x").name == "d7x"
    assert scaling.resolve("tf_efficientdet_lite3x").name == "d-lite3x"
    assert scaling.resolve("efficientdet-lite0").name == "d-lite0"  # google/automl's name
    assert scaling.resolve("tf_efficientnet_lite2").name == "lite2" and scaling.resolve("efficientnet_lite0").lite
    assert scaling.resolve("EfficientNet-B3").name == "b3"
