"""Training targets and losses (exact on constructed cases), and a tiny deterministic training run."""
import json

import numpy as np
import pytest
import torch

from training import BACKGROUND, IGNORE, assign, detection_loss, encode, train


def decode(deltas, anchors):
    """The graph's decode (effedge.export.onnx_export), written out: (dy, dx, dh, dw) -> (y1, x1, y2, x2)."""
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cy, cx = anchors[:, 0] + ha / 2 + deltas[:, 0] * ha, anchors[:, 1] + wa / 2 + deltas[:, 1] * wa
    h, w = np.exp(deltas[:, 2]) * ha, np.exp(deltas[:, 3]) * wa
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)


def test_encode_is_the_inverse_of_the_graph_decode():
    rng = np.random.default_rng(0)
    corner, extent = rng.uniform(0, 100, (50, 2)), rng.uniform(5, 50, (50, 2))
    anchors = np.concatenate([corner, corner + extent], 1).astype(np.float32)
    corner, extent = corner + rng.uniform(-3, 3, (50, 2)), extent * rng.uniform(0.5, 2, (50, 2))
    boxes = np.concatenate([corner, corner + extent], 1).astype(np.float32)
    np.testing.assert_allclose(decode(encode(boxes, anchors), anchors), boxes, rtol=1e-5, atol=1e-3)


def test_assignment_thresholds():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 14], [0, 0, 10, 20], [50, 50, 60, 60]], np.float32)
    boxes = np.array([[0, 0, 10, 10]], np.float32)  # IoU with the anchors: 1, 0.71, 0.5, 0
    labels, targets = assign(anchors, boxes, np.array([3]))
    assert labels.tolist() == [3, 3, 3, BACKGROUND]
    assert np.allclose(targets[0], 0) and not np.allclose(targets[1], 0) and np.allclose(targets[3], 0)
    labels, _ = assign(anchors, np.array([[0, 0, 10, 23]], np.float32), np.array([1]))  # IoU 0.43 with #0
    assert labels[0] == IGNORE and labels[2] == 1
    assert assign(anchors, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))[0].tolist() == [BACKGROUND] * 4


def test_loss_rewards_the_right_answer():
    labels = torch.tensor([[2, BACKGROUND, IGNORE]])
    targets = torch.tensor([[[0.1, -0.2, 0.3, 0.0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    right = torch.full((1, 3, 4), -6.0)
    right[0, 0, 2] = 6.0
    wrong = torch.full((1, 3, 4), -6.0)
    wrong[0, 1, 0] = 6.0
    loss_right, _, box_right = detection_loss(right, targets.clone(), labels, targets)
    loss_wrong, _, _ = detection_loss(wrong, torch.zeros_like(targets), labels, targets)
    assert box_right.item() == 0.0 and loss_right < loss_wrong
    ignored = right.clone()
    ignored[0, 2] = 6.0  # the ignored anchor's prediction does not matter
    assert detection_loss(ignored, targets.clone(), labels, targets)[0].item() == pytest.approx(loss_right.item())


def test_tiny_training_run_learns_and_writes_loadable_weights(tmp_path):
    from effedge import build_model
    from shapes import generate

    annotations = generate(tmp_path / "data", 4, size=(128, 128), max_objects=2, seed=1)
    weights = train(tmp_path / "data" / "images", annotations, tmp_path / "run", image_size=128, epochs=6, batch=2,
                    lr=3e-3, log=lambda message: None)
    history = json.loads((tmp_path / "run" / "training.json").read_text())["history"]
    assert len(history) == 6 and all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    model = build_model(0.0, weights=weights, image_size=128, num_classes=4)
    assert model.class_net.predict.conv_pw.out_channels == 9 * 4
