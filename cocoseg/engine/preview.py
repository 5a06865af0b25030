"""The validation preview logged with each epoch: ground truth beside predictions.

``render_validation_preview(images, targets, predictor, class_names, min_side=480) -> PNG bytes``
draws N letterboxed validation images, each as a (ground truth | prediction) pair scaled to at
least ``min_side`` px, masks filled in class colours with ``name score`` labels
(:func:`cocoseg.viz.render_comparison`). Predictions come from the one predictor at its own
settings (predict mode: conf 0.25, one label per box), in the letterboxed frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cocoseg.inference import Predictor
from cocoseg.structures import Detections, SegTargets, letterbox_params
from cocoseg.viz import render_comparison, to_png

__all__ = ["render_validation_preview", "targets_as_detections"]


def targets_as_detections(targets: SegTargets, image_hw: tuple[int, int], batch_size: int) -> list[Detections]:
    """Training-layout ground truth -> one :class:`Detections` per image in input pixels (score 1).

    Masks come from the 1/4-scale overlap maps (instance k of an image is the value k + 1),
    enlarged 4x by repetition.
    """
    h, w = image_hw
    boxes = targets.boxes_cxcywh_norm.cpu() * torch.tensor([w, h, w, h], dtype=torch.float32)
    xyxy = torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)
    out = []
    for b in range(batch_size):
        rows = (targets.batch_idx.cpu() == b).nonzero(as_tuple=True)[0]
        overlap = targets.masks[b].cpu()
        ratio = h // overlap.shape[0]
        masks = torch.stack([overlap == k + 1 for k in range(len(rows))]) if len(rows) else \
            torch.zeros(0, *overlap.shape, dtype=torch.bool)
        masks = masks.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)[:, :h, :w]
        out.append(Detections(xyxy[rows], torch.ones(len(rows)), targets.cls.cpu()[rows], masks))
    return out


def render_validation_preview(images: torch.Tensor, targets: SegTargets, predictor: Predictor,
                              class_names: Sequence[str], *, min_side: int = 480,
                              outputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> bytes:
    """PNG bytes: ``images`` (N, 3, S, S) uint8 letterboxed, their ``targets``, and the predictor's
    detections of them, as (ground truth | prediction) pairs. ``outputs``: the decoded
    ``(pred, proto)`` of these images when a forward already ran (the validator's); else the
    predictor runs one."""
    hw = (int(images.shape[2]), int(images.shape[3]))
    identity = [letterbox_params(hw, hw)] * images.shape[0]
    predictions = (predictor.postprocess(*outputs, identity, masks="full") if outputs is not None
                   else predictor.detect(images, identity, masks="full"))
    truths = targets_as_detections(targets, hw, images.shape[0])
    rgbs = [np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy()) for img in images]
    return to_png(render_comparison(rgbs, truths, predictions, class_names, min_side=min_side))
