import numpy as np
import pytest
import torch

from effedge import build_model
from effedge.arch.anchors import anchors_for
from effedge.errors import VariantError
from effedge.arch.topology import bifpn_nodes
from effedge.models.layers import resolve_padding
from effedge.arch.scaling import resolve


def test_fractional_phi_builds_and_runs_forward():
    model = build_model(0.5, image_size=256)
    spec = model.spec
    assert spec.name == "phi0.5" and spec.fpn_channels == 72
    with torch.no_grad():
        classes, boxes = model(torch.randn(1, 3, 256, 256))
    assert [c.shape[-1] for c in classes] == [32, 16, 8, 4, 2]
    assert all(c.shape[1] == 9 * 90 for c in classes) and all(b.shape[1] == 9 * 4 for b in boxes)
    assert all(torch.isfinite(t).all() for t in classes + boxes)


def test_classifier_forward_and_default_classes():
    model = build_model("b0", num_classes=10)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)
    assert build_model("b0").classifier.out_features == 1000
    assert build_model("d0", image_size=128).num_classes == 90


@pytest.mark.parametrize("variant, size, message", [
    ("d0", 500, r"not a multiple of 128, the largest feature stride of d0; use e.g. 384 or 512"),
    ("d7x", 512 + 128, r"not a multiple of 256"),
    ("d0", 0, r"not a positive integer"),
])
def test_input_size_must_fit_the_pyramid(variant, size, message):
    with pytest.raises(VariantError, match=message):
        build_model(variant, image_size=size)


def test_unknown_padding_is_refused():
    with pytest.raises(VariantError, match="unknown padding 'valid'"):
        build_model("d0", image_size=128, pad="valid")


def test_tf_same_padding_is_asymmetric_and_size_dependent():
    # stride 2 on an even size: the extra pixel goes bottom/right (TF 'SAME')
    assert resolve_padding("same", (512, 512), 3, 2) == (0, 1, 0, 1)
    assert resolve_padding("same", (511, 511), 3, 2) == (1, 1, 1, 1)
    assert resolve_padding("same", (64, 64), 5, 2) == (1, 2, 1, 2)
    assert resolve_padding("symmetric", (64, 64), 5, 2) == (2, 2, 2, 2)


def test_bifpn_topology():
    nodes = bifpn_nodes(3, 7)
    assert nodes == [(6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
                     (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11))]
    assert len(bifpn_nodes(3, 8)) == 10


def test_anchors_match_the_reference(effdet_reference):
    from effdet.anchors import Anchors

    # d-lite0 and d-lite2 at their 320 and 448 px: no multiple of 128, so the top levels round up (3², 4²)
    for variant, size in (("d0", 512), ("d7", 640), ("d7x", 512), ("d-lite0", 320), ("d-lite2", 448),
                          ("d-lite3x", 640)):
        spec = resolve(variant)
        reference = Anchors(spec.min_level, spec.max_level, spec.num_scales, list(spec.aspect_ratios),
                            spec.anchor_scale, (size, size)).boxes.numpy()
        ours = anchors_for(spec, (size, size))
        assert ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_anchor_count_and_order():
    anchors = anchors_for(resolve("d0"))
    assert anchors.shape == (9 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2), 4)
    first = anchors[:9]  # level 3, location (0, 0): centred at (4, 4); base size 4·8 = 32
    np.testing.assert_allclose((first[:, :2] + first[:, 2:]) / 2, 4.0, rtol=1e-6)
    np.testing.assert_allclose(first[0], [-12, -12, 20, 20])
