"""Params and MACs of every named variant against the reference implementations (counted live here, on
weightless "meta" instances) and against the published figures (which are rounded)."""
import pytest
import torch

from effedge.models import complexity, count_macs, count_params
from effedge.arch.scaling import EFFICIENTDETS, EFFICIENTNETS

PAPER = {  # params (M), MACs (B): Tan & Le 2019; Tan, Pang & Le 2020
    "b0": (5.3, 0.39), "b1": (7.8, 0.70), "b2": (9.2, 1.0), "b3": (12, 1.8), "b4": (19, 4.2), "b5": (30, 9.9),
    "b6": (43, 19), "b7": (66, 37),
    "d0": (3.9, 2.5), "d1": (6.6, 6.1), "d2": (8.1, 11), "d3": (12, 25), "d4": (21, 55), "d5": (34, 135),
    "d6": (52, 226), "d7": (52, 325), "d7x": (77, 410),
}


def _reference_efficientnet(timm_module, name):
    with torch.device("meta"):
        return timm_module.create_model(f"tf_efficientnet_{name}")


def _reference_efficientdet(effdet_reference, name):
    module, get_config = effdet_reference
    with torch.device("meta"):
        return module.EfficientDet(get_config(f"tf_efficientdet_{name}"), pretrained_backbone=False)


def _check(name, ours, reference):
    params, macs = ours
    ref_params, ref_macs = reference
    paper_params, paper_macs = PAPER[name]
    assert abs(params - ref_params) <= 0.005 * ref_params, (name, params, ref_params)
    assert abs(macs - ref_macs) <= 0.01 * ref_macs, (name, macs, ref_macs)
    assert abs(params / 1e6 - paper_params) <= 0.03 * paper_params, (name, params, paper_params)
    assert abs(macs / 1e9 - paper_macs) <= 0.05 * paper_macs, (name, macs, paper_macs)


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_efficientnet_params_and_macs(name, timm_module):
    size = EFFICIENTNETS[name].resolution
    reference = _reference_efficientnet(timm_module, name)
    _check(name, complexity(name), (count_params(reference), count_macs(reference, (size, size))))


@pytest.mark.parametrize("name", EFFICIENTDETS)
def test_efficientdet_params_and_macs(name, effdet_reference):
    size = EFFICIENTDETS[name].image_size
    reference = _reference_efficientdet(effdet_reference, name)
    _check(name, complexity(name), (count_params(reference), count_macs(reference, (size, size))))


def test_custom_phi_grows_monotonically():
    figures = [complexity(phi) for phi in (0, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7)]
    assert all(b[0] > a[0] and b[1] > a[1] for a, b in zip(figures, figures[1:])), figures


@pytest.mark.parametrize("phi, named", [(0, "d0"), (1, "d1"), (2, "d2"), (3, "d3"), (4, "d4"), (5, "d5"),
                                        (6, "d6"), (7, "d7x")])
def test_integer_phi_lands_near_the_named_variant(phi, named):
    """The named variants deviate from the formula (B1 keeps width 1.0, D5 has 7 BiFPN layers, D7 reuses
    D6's backbone and BiFPN, so φ=7 is compared with D7x), hence "near" is within a factor 1.6 in params and
    MACs; the exact differences are printed by tools/scaling_report.py."""
    params, macs = complexity(float(phi))
    named_params, named_macs = complexity(named)
    assert 1 / 1.6 < params / named_params < 1.6
    assert 1 / 1.6 < macs / named_macs < 1.6
