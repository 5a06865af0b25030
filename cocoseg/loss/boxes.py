"""Box geometry of the assigner and the loss: CIoU and DFL targets (plus re-exported anchors).

Conventions (spec sections 1, 5.2): boxes are ``xyxy``; anchor points are cell centres
``(x + 0.5, y + 0.5)`` in each level's grid units, levels P3 -> P5, row-major inside a level;
distances are ``(left, top, right, bottom)`` from the anchor point.
"""

from __future__ import annotations

import math

import torch

# Anchors and DFL decoding are shared with inference, so they live with the model (layer L1).
from cocoseg.model.anchors import decode_distributions, distances_to_boxes, make_anchors

__all__ = ["bbox_ciou", "boxes_to_distances", "decode_distributions", "distances_to_boxes", "make_anchors"]


def boxes_to_distances(points: torch.Tensor, boxes_xyxy: torch.Tensor, max_dist: float) -> torch.Tensor:
    """Inverse of :func:`distances_to_boxes`, clamped to ``[0, max_dist]`` (the DFL target range)."""
    x1y1, x2y2 = boxes_xyxy.chunk(2, -1)
    return torch.cat((points - x1y1, x2y2 - points), -1).clamp_(0, max_dist)


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of two (..., 4) xyxy tensors -> (...).

    CIoU = IoU - rho^2 / c^2 - alpha * v (spec 7.4): rho is the centre distance, c the diagonal
    of the enclosing box, v the aspect-ratio term; alpha is a weight and carries no gradient.
    ``eps`` is added to heights and to the union so degenerate boxes stay finite.
    """
    b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
    b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps
    inter = ((torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(0)
             * (torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)).clamp(0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2).pow(2) + (b2y1 + b2y2 - b1y1 - b1y2).pow(2)) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
