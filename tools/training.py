"""Train an EfficientDet on a COCO-format dataset (CPU, or CUDA when present).

Targets follow the EfficientDet recipe: an anchor is positive for the ground-truth box it overlaps most when
that IoU ≥ 0.5, negative below 0.4, ignored in between; box targets are (dy, dx, dh, dw) relative to the anchor
(what :mod:`effedge.export.onnx_export` decodes). Loss = focal loss (α 0.25, γ 1.5) on the class logits + 50 × Huber
(δ 0.1) on the box regression of positives, both normalized by the number of positives. Images are
letterboxed exactly as at run time (:mod:`effedge.runtime.preprocess`), with horizontal flips.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 1.5
HUBER_DELTA, BOX_WEIGHT = 0.1, 50.0
IGNORE, BACKGROUND = -2, -1


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a [N, 4]`` with every box in ``b [M, 4]`` (same corner order in both)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def encode(boxes_yxyx: np.ndarray, anchors_yxyx: np.ndarray) -> np.ndarray:
    """(dy, dx, dh, dw) that turn each anchor into its box (the inverse of the graph's decode)."""
    ha, wa = anchors_yxyx[:, 2] - anchors_yxyx[:, 0], anchors_yxyx[:, 3] - anchors_yxyx[:, 1]
    ya, xa = anchors_yxyx[:, 0] + ha / 2, anchors_yxyx[:, 1] + wa / 2
    h, w = boxes_yxyx[:, 2] - boxes_yxyx[:, 0], boxes_yxyx[:, 3] - boxes_yxyx[:, 1]
    y, x = boxes_yxyx[:, 0] + h / 2, boxes_yxyx[:, 1] + w / 2
    return np.stack([(y - ya) / ha, (x - xa) / wa, np.log(h / ha), np.log(w / wa)], -1).astype(np.float32)


def assign(anchors_yxyx: np.ndarray, boxes_yxyx: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor: class target (class index, BACKGROUND or IGNORE) and box target (zeros unless positive)."""
    labels = np.full(len(anchors_yxyx), BACKGROUND, np.int64)
    box_targets = np.zeros((len(anchors_yxyx), 4), np.float32)
    if len(boxes_yxyx) == 0:
        return labels, box_targets
    ious = iou_matrix(anchors_yxyx, boxes_yxyx)
    best = ious.argmax(1)
    best_iou = ious[np.arange(len(anchors_yxyx)), best]
    labels[(best_iou >= NEGATIVE_IOU) & (best_iou < POSITIVE_IOU)] = IGNORE
    positive = best_iou >= POSITIVE_IOU
    labels[positive] = classes[best[positive]]
    box_targets[positive] = encode(boxes_yxyx[best[positive]], anchors_yxyx[positive])
    return labels, box_targets


def detection_loss(class_logits, box_regression, labels, box_targets):
    """(total, class, box) losses of a batch: focal + weighted Huber, normalized by the positives."""
    import torch
    import torch.nn.functional as F

    positive = labels >= 0
    valid = labels != IGNORE
    num_positive = positive.sum().clamp(min=1).float()
    one_hot = F.one_hot(labels.clamp(min=0), class_logits.shape[-1]).float() * positive[..., None]
    probability = class_logits.sigmoid()
    pt = torch.where(one_hot == 1, probability, 1 - probability)
    alpha = torch.where(one_hot == 1, FOCAL_ALPHA, 1 - FOCAL_ALPHA)
    bce = F.binary_cross_entropy_with_logits(class_logits, one_hot, reduction="none")
    focal = (alpha * (1 - pt) ** FOCAL_GAMMA * bce * valid[..., None]).sum() / num_positive
    huber = F.huber_loss(box_regression, box_targets, delta=HUBER_DELTA, reduction="none").sum(-1)
    box = (huber * positive).sum() / (num_positive * 4)
    return focal + BOX_WEIGHT * box, focal, box


def _flatten(levels, width: int):
    import torch

    return torch.cat([t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, width) for t in levels], 1)


class Dataset:
    """COCO images letterboxed to ``size`` with their targets; category id k is class index k − 1."""

    def __init__(self, images_dir: Path, annotations: Path, size: int, anchors_yxyx: np.ndarray):
        coco = json.loads(Path(annotations).read_text())
        self.images_dir, self.size, self.anchors = Path(images_dir), size, anchors_yxyx
        self.records = coco["images"]
        self.objects = {r["id"]: [] for r in self.records}
        for a in coco["annotations"]:
            self.objects[a["image_id"]].append(a)

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int, flip: bool):
        from effedge.runtime.images import load_rgb
        from effedge.runtime.preprocess import letterbox, normalize

        record = self.records[index]
        canvas, scale = letterbox(load_rgb(self.images_dir / record["file_name"]), self.size, self.size)
        boxes = np.array([[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3], a["bbox"][0] + a["bbox"][2]]
                          for a in self.objects[record["id"]]], np.float32).reshape(-1, 4) * scale
        classes = np.array([a["category_id"] - 1 for a in self.objects[record["id"]]], np.int64)
        if flip:
            canvas = canvas[:, ::-1]
            boxes[:, [1, 3]] = self.size - boxes[:, [3, 1]]
        labels, box_targets = assign(self.anchors, boxes, classes)
        return normalize(np.ascontiguousarray(canvas)[None])[0], labels, box_targets


def train(images_dir: str | Path, annotations: str | Path, out: str | Path, *, variant=0.0, image_size: int = 256,
          num_classes: int = 4, epochs: int = 30, batch: int = 8, lr: float = 2e-3, seed: int = 0,
          log: Callable[[str], None] = print, max_minutes: Optional[float] = None) -> Path:
    """Train and write ``weights.pth`` (fp32) and ``weights.fp16.pth`` into ``out``; returns the fp16 file."""
    import torch

    from effedge.arch.anchors import anchors_for
    from effedge.models import build_model

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(variant, image_size=image_size, num_classes=num_classes).to(device).train()
    with torch.no_grad():  # start from a 1 % foreground prior, as the focal-loss recipe does
        model.class_net.predict.conv_pw.bias.fill_(-math.log((1 - 0.01) / 0.01))
    data = Dataset(Path(images_dir), Path(annotations), image_size, anchors_for(model.spec, (image_size,) * 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(data) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(data))
        sums = np.zeros(3)
        for first in range(0, len(order), batch):
            samples = [data.sample(int(i), bool(rng.random() < 0.5)) for i in order[first:first + batch]]
            images, labels, targets = (torch.from_numpy(np.stack(parts)).to(device) for parts in zip(*samples))
            class_levels, box_levels = model(images)
            loss, focal, box = detection_loss(_flatten(class_levels, num_classes), _flatten(box_levels, 4),
                                              labels, targets)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            sums += [loss.item(), focal.item(), box.item()]
        minutes = (time.perf_counter() - start) / 60
        mean = sums / math.ceil(len(order) / batch)
        history.append({"epoch": epoch + 1, "loss": mean[0], "class": mean[1], "box": mean[2],
                        "minutes": round(minutes, 2)})
        log(f"epoch {epoch + 1}/{epochs}: loss {mean[0]:.4f} (class {mean[1]:.4f}, box {mean[2]:.5f}), "
            f"{minutes:.1f} min")
        if max_minutes and minutes > max_minutes:
            log(f"stopping after {minutes:.1f} min (limit {max_minutes})")
            break
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.eval().state_dict().items()}
    torch.save(state, out / "weights.pth")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, out / "weights.fp16.pth")
    (out / "training.json").write_text(json.dumps({
        "variant": model.spec.name, "image_size": image_size, "num_classes": num_classes, "epochs_run": len(history),
        "batch": batch, "lr": lr, "device": device, "history": history,
        "minutes": round((time.perf_counter() - start) / 60, 2)}, indent=2))
    return out / "weights.fp16.pth"
