"""The overlay renderer and the validation preview (ground truth beside predictions)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cocoseg.structures import Detections, SegTargets
from cocoseg.viz import class_colour, draw_detections, render_comparison


def _det(cls: int) -> Detections:
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    return Detections(torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.tensor([0.9]), torch.tensor([cls]), masks)


def test_masks_are_filled_in_the_class_colour_and_tiles_reach_min_side() -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    image = np.asarray(draw_detections(rgb, _det(2), ["a", "b", "c"]))
    assert tuple(image[20, 20]) == tuple(int(v * 0.5) for v in class_colour(2))
    assert (image[50, 50] == 0).all()
    sheet = render_comparison([rgb] * 3, [_det(0)] * 3, [_det(1)] * 3, ["a", "b"], min_side=480)
    assert sheet.height >= 2 * 480 and sheet.width >= 4 * 480  # 2 pairs per row, 2 rows


def test_validation_preview_draws_truth_and_predictions() -> None:
    from cocoseg.engine.preview import render_validation_preview, targets_as_detections
    from cocoseg.inference import Predictor
    from cocoseg.model import build_model

    torch.manual_seed(0)
    model = build_model("n", 3)
    with torch.no_grad():
        for branch in model.head.cv3:
            branch[-1].bias[1] = 3.0
    overlap = torch.zeros(2, 16, 16, dtype=torch.int32)
    overlap[0, 2:6, 2:6] = 1
    targets = SegTargets(torch.tensor([0]), torch.tensor([2]), torch.tensor([[0.25, 0.25, 0.25, 0.25]]), overlap)
    (truth, empty) = targets_as_detections(targets, (64, 64), 2)
    assert len(truth) == 1 and len(empty) == 0 and truth.masks[0, 8:24, 8:24].all() and truth.masks.sum() == 256
    images = torch.full((2, 3, 64, 64), 114, dtype=torch.uint8)
    predictor = Predictor(model, class_names=["a", "b", "c"], imgsz=64)
    png = render_validation_preview(images, targets, predictor, ["a", "b", "c"], min_side=480)
    sheet = Image.open(io.BytesIO(png))
    assert sheet.format == "PNG" and min(sheet.size) >= 480
    # the validator hands over the forward it already ran: the same sheet, pixel for pixel
    reused = render_validation_preview(images, targets, predictor, ["a", "b", "c"], min_side=480,
                                       outputs=predictor.forward(images))
    assert Image.open(io.BytesIO(reused)).tobytes() == sheet.tobytes()
