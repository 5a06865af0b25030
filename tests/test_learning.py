"""Learning test: the n model overfits a tiny synthetic set on CPU (issue 3, item 7).

Eight 96x96 images from ``cocoseg.ingest.synthetic`` (one or two non-overlapping coloured shapes,
four classes). Full-batch
training with the real loss; after training, the BatchNorm statistics are re-estimated on the
same images (the 0.03 momentum of the YOLOv8 BNs needs hundreds of steps otherwise), then the
model is evaluated in eval mode through the real post-processing and COCO evaluator.
Pass: total loss falls at least 5x, mask AP50 on those images >= 0.5.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from cocoseg.ingest.synthetic import SHAPES, make_image
from cocoseg.loss import SegmentationLoss
from cocoseg.metrics import COCOEvaluator
from cocoseg.model import build_model, decode
from cocoseg.model.postprocess import postprocess
from cocoseg.structures import SegTargets

SIZE = 96
STEPS = int(os.environ.get("LEARNING_STEPS", "50"))
CLASSES = tuple(SHAPES)  # circle, square, triangle, star


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_shapes(num_images: int, seed: int = 0) -> tuple[list[np.ndarray], list[list[tuple[int, np.ndarray]]]]:
    """Images (SIZE, SIZE, 3) uint8 and, per image, (class, polygon (V, 2) px) of each shape,
    from the project's synthetic generator (1 or 2 non-overlapping shapes per image)."""
    images, shapes = [], []
    for index in range(1, num_images + 1):
        img, polys = make_image(seed, index, SIZE, SIZE, CLASSES, max_instances=2)
        images.append(np.asarray(img))
        shapes.append(polys)
    return images, shapes


def build_targets(shapes: list[list[tuple[int, np.ndarray]]]) -> tuple[SegTargets, dict]:
    """SegTargets (overlap maps at SIZE/4) and the same ground truth as a COCO dict."""
    rows, coco = [], {"images": [], "annotations": [],
                      "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    masks = torch.zeros(len(shapes), SIZE // 4, SIZE // 4, dtype=torch.int32)
    for b, polys in enumerate(shapes):
        coco["images"].append({"id": b + 1, "height": SIZE, "width": SIZE, "file_name": f"{b}.png"})
        for k, (cls, poly) in enumerate(polys):
            (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
            rows.append((b, cls, (x0 + x1) / 2 / SIZE, (y0 + y1) / 2 / SIZE, (x1 - x0) / SIZE, (y1 - y0) / SIZE))
            full = Image.new("L", (SIZE, SIZE), 0)
            ImageDraw.Draw(full).polygon([tuple(v) for v in poly], fill=255)
            low = np.asarray(full.resize((SIZE // 4, SIZE // 4), Image.Resampling.BILINEAR)) > 127
            masks[b][torch.from_numpy(low)] = k + 1
            flat = [float(v) for v in poly.reshape(-1)]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": b + 1, "category_id": cls + 1, "iscrowd": 0,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "segmentation": [flat],
                "area": float(mask_utils.area(mask_utils.frPyObjects([flat], SIZE, SIZE)).sum())})
    r = torch.tensor(rows, dtype=torch.float32)
    return SegTargets(batch_idx=r[:, 0].long(), cls=r[:, 1].long(), boxes_cxcywh_norm=r[:, 2:], masks=masks), coco


def evaluate(model: torch.nn.Module, images: torch.Tensor, coco: dict) -> dict:
    """Eval-mode COCO metrics after re-estimating BN statistics on ``images`` (on a copy)."""
    probe = copy.deepcopy(model)
    for module in probe.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass gives the exact batch statistics
    probe.train()
    with torch.no_grad():
        probe(images)
        probe.eval()
        pred, proto = decode(probe(images))
    evaluator = COCOEvaluator(coco)
    evaluator.process([img["id"] for img in coco["images"]], postprocess(pred, proto))
    return evaluator.evaluate()


@pytest.mark.slow
def test_n_model_overfits_synthetic_shapes() -> None:
    torch.manual_seed(0)
    raw_images, shapes = make_shapes(8)
    images = torch.from_numpy(np.stack(raw_images)).permute(0, 3, 1, 2).float() / 255
    targets, coco = build_targets(shapes)
    model = build_model("n", len(CLASSES))
    criterion = SegmentationLoss.from_model(model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    history, start = [], time.perf_counter()
    for _ in range(STEPS):
        losses = criterion(model(images), targets)
        optimiser.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        history.append(float(losses["loss"].detach()))
    first, last = np.mean(history[:3]), np.mean(history[-5:])
    metrics = evaluate(model, images, coco)
    report = (f"loss {first:.2f} -> {last:.2f} ({first / last:.1f}x) in {time.perf_counter() - start:.0f} s; "
              f"mask AP50 {metrics['segm']['AP50']:.3f}, box AP50 {metrics['bbox']['AP50']:.3f}")
    print(report)
    # Measured (docs/reproducibility.md): 206.28 -> 14.22 (14.5x), mask AP50 1.000, the same in
    # six runs out of six (seeded, one thread); the bars sit far below.
    assert first / last >= 5.0, report
    assert metrics["segm"]["AP50"] >= 0.5, report
