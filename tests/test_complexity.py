"""Params and MACs of every named variant against the reference implementations (counted live here, on
weightless "meta" instances) and against the published figures (which are rounded); the analytic counter
(``effedge models``, no torch) against the network effedge builds."""
import dataclasses
import functools
import json
import subprocess
import sys

import pytest
import torch

from effedge.arch import scaling
from effedge.arch.complexity import analytic_complexity
from effedge.arch.scaling import EFFICIENTDET_LITES, EFFICIENTDETS, EFFICIENTNET_LITES, EFFICIENTNETS, NAMED_VARIANTS, \
    efficientnet_for_phi
from effedge.models import complexity, count_macs, count_params

_measured = functools.cache(complexity)


def measured(variant, image_size=None, num_classes=None):
    """Counted on the built (meta) network, once: the reference and the analytic tests both need them."""
    return _measured(variant, image_size, num_classes)

PAPER = {  # params (M), MACs (B): Tan & Le 2019; Tan, Pang & Le 2020
    "b0": (5.3, 0.39), "b1": (7.8, 0.70), "b2": (9.2, 1.0), "b3": (12, 1.8), "b4": (19, 4.2), "b5": (30, 9.9),
    "b6": (43, 19), "b7": (66, 37),
    "d0": (3.9, 2.5), "d1": (6.6, 6.1), "d2": (8.1, 11), "d3": (12, 25), "d4": (21, 55), "d5": (34, 135),
    "d6": (52, 226), "d7": (52, 325), "d7x": (77, 410),
}
LITE_PUBLISHED_PARAMS = {  # millions: tensorflow/tpu efficientnet/lite and google/automl efficientdet READMEs
    "lite0": 4.7, "lite1": 5.4, "lite2": 6.1, "lite3": 8.2, "lite4": 13.0,
    "d-lite0": 3.2, "d-lite1": 4.2, "d-lite2": 5.3, "d-lite3": 8.4, "d-lite3x": 9.3, "d-lite4": 15.1,
}


def _reference_efficientnet(timm_module, name):
    with torch.device("meta"):
        return timm_module.create_model(f"tf_efficientnet_{name}")


def _reference_efficientdet(effdet_reference, name):
    module, get_config = effdet_reference
    with torch.device("meta"):
        return module.EfficientDet(get_config(f"tf_efficientdet_{name}"), pretrained_backbone=False)


def _check_against_reference(name, ours, reference):
    (params, macs), (ref_params, ref_macs) = ours, reference
    assert abs(params - ref_params) <= 0.005 * ref_params, (name, params, ref_params)
    assert abs(macs - ref_macs) <= 0.01 * ref_macs, (name, macs, ref_macs)


def _check(name, ours, reference):
    params, macs = ours
    _check_against_reference(name, ours, reference)
    paper_params, paper_macs = PAPER[name]
    assert abs(params / 1e6 - paper_params) <= 0.03 * paper_params, (name, params, paper_params)
    assert abs(macs / 1e9 - paper_macs) <= 0.05 * paper_macs, (name, macs, paper_macs)


@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_efficientnet_params_and_macs(name, timm_module):
    size = EFFICIENTNETS[name].resolution
    reference = _reference_efficientnet(timm_module, name)
    _check(name, measured(name), (count_params(reference), count_macs(reference, (size, size))))


@pytest.mark.parametrize("name", EFFICIENTDETS)
def test_efficientdet_params_and_macs(name, effdet_reference):
    size = EFFICIENTDETS[name].image_size
    reference = _reference_efficientdet(effdet_reference, name)
    _check(name, measured(name), (count_params(reference), count_macs(reference, (size, size))))


@pytest.mark.parametrize("name", EFFICIENTNET_LITES)
def test_efficientnet_lite_params_and_macs(name, timm_module):
    """timm's tf_efficientnet_lite*: fixed 32-channel stem and 1280-channel head, no squeeze-excite; what
    ``effedge models`` shows (the analytic count) is what the reference has."""
    size = EFFICIENTNET_LITES[name].resolution
    reference = _reference_efficientnet(timm_module, name)
    _check_against_reference(name, measured(name), (count_params(reference), count_macs(reference, (size, size))))
    _check_against_reference(name, analytic_complexity(name), measured(name))
    assert abs(analytic_complexity(name)[0] / 1e6 - LITE_PUBLISHED_PARAMS[name]) <= 0.03 * LITE_PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", EFFICIENTDET_LITES)
def test_efficientdet_lite_params_and_macs(name, effdet_reference):
    """effdet's tf_efficientdet_lite* at their own sizes (320 and 448 px included: P6/P7 round up)."""
    size = EFFICIENTDET_LITES[name].image_size
    reference = _reference_efficientdet(effdet_reference, name.removeprefix("d-"))
    _check_against_reference(name, measured(name), (count_params(reference), count_macs(reference, (size, size))))
    _check_against_reference(name, analytic_complexity(name), measured(name))
    assert abs(analytic_complexity(name)[0] / 1e6 - LITE_PUBLISHED_PARAMS[name]) <= 0.03 * LITE_PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("variant, image_size, num_classes", [
    *((name, None, None) for name in NAMED_VARIANTS),
    # custom φ: fractional widths and repeats; 6.5 also has the plain-sum fusion of φ > 5
    (0.5, None, None), (1.5, None, None), (3.7, None, None), (6.5, None, None),
    # other inputs and heads: non-square, a classifier size that is no multiple of 32, few or many classes
    ("b0", (200, 330), 10), (efficientnet_for_phi(2.3), 250, 7), ("d0", 384, 3), ("d1", (256, 640), 1),
    (0.5, (128, 256), 200),
])
def test_analytic_counts_equal_the_built_network(variant, image_size, num_classes):
    """Exactly: every weight, bias, BatchNorm and fusion weight, and every conv/linear multiply-add."""
    assert analytic_complexity(variant, image_size, num_classes) == measured(variant, image_size, num_classes)


def test_a_stage_without_squeeze_excite_is_counted_as_built(monkeypatch):
    """Specs drive the count, not the B/D families: an SE ratio of 0 (as in the Lite variants) builds no SE
    layers, and the counter counts none."""
    with_se = {variant: analytic_complexity(variant, 128) for variant in ("b0", "d0")}
    stages = tuple(dataclasses.replace(stage, se_ratio=0.0) if index % 2 else stage
                   for index, stage in enumerate(scaling.BASE_STAGES))
    monkeypatch.setattr(scaling, "BASE_STAGES", stages)
    for variant in ("b0", "d0"):
        counted = analytic_complexity(variant, 128)
        assert counted == complexity(variant, 128)
        assert counted[0] < with_se[variant][0]  # (the patch took: there were SE layers to drop)


def test_models_command_imports_no_torch_and_gives_the_papers_figures():
    """``effedge models --json`` run as the console does, in a fresh interpreter; what it imported is read
    from that interpreter's ``sys.modules`` once the command has finished."""
    code = ("import json, runpy, sys\n"
            "sys.argv = ['effedge', 'models', '--json']\n"
            "try:\n    runpy.run_module('effedge', run_name='__main__')\n"
            "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
            "print(json.dumps(sorted(m for m in ('torch', 'onnx', 'effedge.models') if m in sys.modules)),"
            " file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == []
    rows = {row["variant"]: row for row in json.loads(result.stdout)}
    assert list(rows) == list(NAMED_VARIANTS) and set(PAPER) <= set(rows)
    for name, (paper_params, paper_macs) in PAPER.items():
        assert abs(rows[name]["params"] / 1e6 - paper_params) <= 0.03 * paper_params, (name, rows[name])
        assert abs(rows[name]["macs"] / 1e9 - paper_macs) <= 0.05 * paper_macs, (name, rows[name])
    for name, spec in NAMED_VARIANTS.items():  # the Lite family says what it is, and what input it expects
        assert (rows[name]["lite"], rows[name]["activation"]) == (spec.lite, "relu6" if spec.lite else "silu")
        assert rows[name]["normalization"]["mean"] == ([0.5] * 3 if spec.lite else [0.485, 0.456, 0.406])
    for name, published in LITE_PUBLISHED_PARAMS.items():
        assert abs(rows[name]["params"] / 1e6 - published) <= 0.03 * published, (name, rows[name])


def test_custom_phi_grows_monotonically():
    # The analytic counts (exact, above) spare this and the next test some thirty model builds.
    figures = [analytic_complexity(phi) for phi in (0, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7)]
    assert all(b[0] > a[0] and b[1] > a[1] for a, b in zip(figures, figures[1:])), figures


@pytest.mark.parametrize("phi, named", [(0, "d0"), (1, "d1"), (2, "d2"), (3, "d3"), (4, "d4"), (5, "d5"),
                                        (6, "d6"), (7, "d7x")])
def test_integer_phi_lands_near_the_named_variant(phi, named):
    """The named variants deviate from the formula (B1 keeps width 1.0, D5 has 7 BiFPN layers, D7 reuses
    D6's backbone and BiFPN, so φ=7 is compared with D7x), hence "near" is within a factor 1.6 in params and
    MACs; the exact differences are printed by tools/scaling_report.py."""
    params, macs = analytic_complexity(float(phi))
    named_params, named_macs = analytic_complexity(named)
    assert 1 / 1.6 < params / named_params < 1.6
    assert 1 / 1.6 < macs / named_macs < 1.6
