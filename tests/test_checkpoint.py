"""Reference-format checkpoints (effdet / timm key layouts, random values) load into effedge's models with
no missing or unexpected keys, and the outputs match the reference forward."""
import hashlib

import pytest
import torch
from helpers import randomize_

from effedge import build_model
from effedge.errors import CheckpointError, VariantError

TOLERANCE = 1e-4


def _reference_detector(effdet_reference, name, size, seed=0):
    module, get_config = effdet_reference
    config = get_config(name)
    config.image_size = (size, size)
    return randomize_(module.EfficientDet(config, pretrained_backbone=False), seed).eval()


def _max_error(reference_out, ours_out):
    pairs = [(a, b) for ref_level, our_level in zip(reference_out, ours_out) for a, b in zip(ref_level, our_level)]
    assert len(pairs) == sum(len(level) for level in reference_out)
    for a, b in pairs:
        assert a.shape == b.shape
    return max((a - b).abs().max().item() for a, b in pairs), max(a.abs().max().item() for a, _ in pairs)


@pytest.mark.parametrize("name, variant, size, pad", [
    ("tf_efficientdet_d0", "d0", 256, "same"),  # fast normalized fusion, TF 'same' padding
    ("efficientdet_d0", "d0", 256, "symmetric"),  # PyTorch-trained layout
    ("tf_efficientdet_d7x", "d7x", 256, "same"),  # sum fusion, P3–P8
])
def test_effdet_checkpoint_matches_reference(effdet_reference, tmp_path, name, variant, size, pad):
    reference = _reference_detector(effdet_reference, name, size)
    if variant == "d0":  # through a file, wrapped as training scripts save it
        weights = tmp_path / "checkpoint.pth"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
                   weights)
    else:  # 77M parameters: hand the state dict over directly
        weights = reference.state_dict()
    ours = build_model(variant, weights=weights, image_size=size, pad=pad)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_out, our_out = reference(x), ours(x)
    error, magnitude = _max_error(ref_out, our_out)
    assert magnitude > 0.1  # the comparison is not between two near-zero tensors
    assert error <= TOLERANCE, (name, error)
    # reference order: per level P3.., class logits [B, A·C, H, W] and boxes [B, A·4, H, W]
    assert [tuple(t.shape) for t in our_out[0]][0] == (2, 9 * 90, size // 8, size // 8)
    assert [tuple(t.shape) for t in our_out[1]][-1] == (2, 9 * 4, size // 2 ** ours.spec.max_level,
                                                       size // 2 ** ours.spec.max_level)


@pytest.mark.parametrize("variant", ["b0", "b3"])
def test_timm_classifier_checkpoint_matches_reference(timm_module, variant):
    reference = randomize_(timm_module.create_model(f"tf_efficientnet_{variant}"), seed=2).eval()
    ours = build_model(variant, weights=reference.state_dict())
    size = ours.image_size
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        error = (reference(x) - ours(x)).abs().max().item()
    assert error <= TOLERANCE


# The Lite family: ReLU6 everywhere the B/D networks have SiLU, no squeeze-excite, fixed stem/head, plain-sum
# fusion. The real sizes of lite0 and d-lite0 (320: P6/P7 round up, P7→P6 up-samples 3→5) run by default; the
# others at reduced sizes (192: 2→3 and 3→6 up-sampling, not ×2) and, marked slow, at their real sizes.
_LITE_CLASSIFIERS = [("lite0", None), *((f"lite{i}", 128) for i in range(1, 5)),
                     *(pytest.param(f"lite{i}", None, marks=pytest.mark.slow) for i in range(1, 5))]
_LITE_DETECTORS = [("lite0", 320), ("lite0", 448), *((v, 192) for v in ("lite1", "lite2", "lite3", "lite3x", "lite4")),
                   *(pytest.param(v, None, marks=pytest.mark.slow) for v in ("lite1", "lite2", "lite3", "lite3x",
                                                                           "lite4"))]


@pytest.mark.parametrize("variant, size", _LITE_CLASSIFIERS)
def test_timm_lite_classifier_matches_reference(timm_module, variant, size):
    reference = randomize_(timm_module.create_model(f"tf_efficientnet_{variant}"), seed=4).eval()
    ours = build_model(variant, weights=reference.state_dict(), image_size=size)
    assert not any(isinstance(m, torch.nn.SiLU) for m in ours.modules())
    x = torch.randn(2, 3, *ours.image_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(x)
        error = (expected - ours(x)).abs().max().item()
    assert expected.abs().max().item() > 0.5
    assert error <= TOLERANCE, (variant, error)


@pytest.mark.parametrize("variant, size", _LITE_DETECTORS)
def test_effdet_lite_detector_matches_reference(effdet_reference, variant, size):
    name = f"tf_efficientdet_{variant}"
    size = size or effdet_reference[1](name).image_size[0]
    reference = _reference_detector(effdet_reference, name, size, seed=6)
    ours = build_model(f"d-{variant}", weights=reference.state_dict(), image_size=size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref_out, our_out = reference(x), ours(x)
    error, magnitude = _max_error(ref_out, our_out)
    assert magnitude > 0.1
    assert error <= TOLERANCE, (name, size, error)
    top = -(-size // 2 ** 7)  # P7 rounds up (3 at 320, 4 at 448)
    assert tuple(our_out[1][-1].shape) == (1, 9 * 4, top, top)


def test_weights_of_another_variant_are_refused_with_the_reason(effdet_reference):
    d1 = _reference_detector(effdet_reference, "tf_efficientdet_d1", 256).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatches .*BiFPN 88 ch × 4 layers"):
        build_model("d0", weights=d1, image_size=256)


def test_wrong_class_count_and_layout_are_diagnosed(effdet_reference):
    state = _reference_detector(effdet_reference, "tf_efficientdet_d0", 256).state_dict()
    with pytest.raises(CheckpointError, match=r"pass num_classes=90"):
        build_model("d0", weights=state, image_size=256, num_classes=20)
    with pytest.raises(CheckpointError, match=r"unexpected .*TF-ported one \(pad='same'\)"):
        build_model("d0", weights=state, image_size=256, pad="symmetric")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_model("d0", weights=tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build_model("d0", weights=corrupt)
    with pytest.raises(VariantError, match="are for d1, not d0"):
        build_model("d0", weights="tf_efficientdet_d1")


def test_url_is_downloaded_once_into_the_hub_cache(tmp_path, monkeypatch):
    source = build_model("b0")
    blob = tmp_path / "blob.pth"
    torch.save(source.state_dict(), blob)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    published = tmp_path / "site" / f"tf_efficientnet_b0_test-{digest[:8]}.pth"
    published.parent.mkdir()
    blob.rename(published)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    model = build_model("b0", weights=published.as_uri())
    cached = tmp_path / "hub" / "checkpoints" / published.name
    assert cached.is_file()
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    published.unlink()  # the second load must come from the cache
    build_model("b0", weights=published.as_uri())

    tampered = tmp_path / "site" / "tf_efficientnet_b0_bad-0000abcd.pth"
    torch.save(source.state_dict(), tampered)
    with pytest.raises(CheckpointError, match="could not download"):
        build_model("b0", weights=tampered.as_uri())
    assert not (tmp_path / "hub" / "checkpoints" / tampered.name).exists()
