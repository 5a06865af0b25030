"""The one decoding of the network's raw outputs into the eval layout (spec 5.2).

The model's forward returns :class:`~cocoseg.structures.RawOutputs` in train and eval mode
alike; the loss consumes that directly, and everything that needs boxes and scores (the
predictor, ONNX export, the benchmarks) calls :func:`decode` once::

    pred, proto = decode(model(images))

``pred`` is (B, 4 + nc + nm, A): rows 0-3 the box (cx, cy, w, h) in input pixels, then sigmoid
class probabilities, then the raw mask coefficients; anchors P3 -> P5, row-major.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cocoseg.structures import RawOutputs

from .anchors import decode_distances, make_anchors

__all__ = ["DEFAULT_STRIDES", "decode"]

DEFAULT_STRIDES = (8.0, 16.0, 32.0)  # P3, P4, P5 of every variant (see yolov8.STRIDES)


def decode(outputs: RawOutputs, *, strides: Sequence[float] = DEFAULT_STRIDES,
           reg_max: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs -> ``(pred, proto)``.

    Args:
        outputs: ``feats`` three maps (B, 4*reg_max + nc, H_i, W_i), ``mask_coeffs`` (B, nm, A),
            ``proto`` (B, nm, H/4, W/4); any float dtype (the result keeps it).
        strides: of the three levels, in input pixels.
        reg_max: DFL bins per box side.

    Returns:
        ``pred`` (B, 4 + nc + nm, A) and ``proto`` unchanged. nc is read from the maps' channels.
    """
    maps, coeffs, proto = outputs
    batch = coeffs.shape[0]
    flat = torch.cat([m.view(batch, m.shape[1], -1) for m in maps], 2)  # (B, 4*reg_max + nc, A)
    num_classes = flat.shape[1] - 4 * reg_max
    box_logits, cls_logits = flat.split((4 * reg_max, num_classes), 1)
    anchor_points, stride_tensor = make_anchors(maps, strides)  # (A, 2), (A, 1)
    distances = _dfl_expectation(box_logits, reg_max)  # (B, 4, A) in grid units
    boxes = decode_distances(distances, anchor_points.T.unsqueeze(0), xywh=True, dim=1)
    return torch.cat((boxes * stride_tensor.T, cls_logits.sigmoid(), coeffs), 1), proto


def _dfl_expectation(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(B, 4*reg_max, A) side-major logits -> (B, 4, A) expected distances in grid units.

    Written as the 1x1 convolution with weights 0..reg_max-1 that the checkpoint format stores
    as ``dfl.conv.weight``, so eval outputs (and the ONNX graph's numbers) stay bit-identical to
    the head's former in-forward decode; :func:`~cocoseg.model.anchors.decode_distributions` is
    the same expectation as a matmul, which rounds differently.
    """
    batch, _, anchors = box_logits.shape
    probs = box_logits.view(batch, 4, reg_max, anchors).transpose(2, 1).softmax(1)  # (B, bins, 4, A)
    bins = torch.arange(reg_max, dtype=probs.dtype, device=probs.device).view(1, reg_max, 1, 1)
    return F.conv2d(probs, bins).view(batch, 4, anchors)
