"""The YOLOv8 segmentation head (spec section 5): box, class and mask-coefficient branches per
level and the prototype network. Decoding is not the head's job: see :mod:`cocoseg.model.decode`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cocoseg.structures import RawOutputs

from .blocks import DFL, Conv, Proto

__all__ = ["SegmentHead"]


def _branch(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Conv 3x3 -> Conv 3x3 -> plain 1x1 Conv2d with bias (no BN, no activation)."""
    return nn.Sequential(Conv(c_in, hidden, 3), Conv(hidden, hidden, 3), nn.Conv2d(hidden, c_out, 1))


class SegmentHead(nn.Module):
    """Decoupled anchor-free head over P3/P4/P5 plus mask prototypes.

    Args:
        num_classes: nc.
        channels: widths of the three neck outputs (P3, P4, P5).
        strides: their strides in input pixels (8, 16, 32).
        proto_channels: npr, the hidden width of the prototype network.
        num_masks: nm, mask coefficients per anchor (32).
        reg_max: DFL bins per box side (16).

    Attribute names (``cv2`` box, ``cv3`` class, ``dfl``, ``proto``, ``cv4`` mask coefficients,
    registered in that order) give the reference state-dict keys and order.
    """

    def __init__(self, num_classes: int, channels: Sequence[int], strides: Sequence[float],
                 proto_channels: int, num_masks: int = 32, reg_max: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_masks = num_masks
        self.reg_max = reg_max
        self.strides = tuple(float(s) for s in strides)
        ch0 = channels[0]
        box_width = max(16, ch0 // 4, 4 * reg_max)
        cls_width = max(ch0, min(num_classes, 100))
        mask_width = max(ch0 // 4, num_masks)
        self.cv2 = nn.ModuleList(_branch(c, box_width, 4 * reg_max) for c in channels)
        self.cv3 = nn.ModuleList(_branch(c, cls_width, num_classes) for c in channels)
        # Kept for the reference state-dict layout; decode() applies the same fixed integral.
        self.dfl = DFL(reg_max)
        self.proto = Proto(ch0, proto_channels, num_masks)
        self.cv4 = nn.ModuleList(_branch(c, mask_width, num_masks) for c in channels)
        self.reset_head_biases()

    def reset_head_biases(self) -> None:
        """The reference's one-off bias init: box logits 1.0; class logits a prior of ~5 objects
        per 640x640 image spread over nc classes and every cell of the level."""
        with torch.no_grad():
            for box, cls, stride in zip(self.cv2, self.cv3, self.strides, strict=True):
                box[-1].bias.fill_(1.0)
                cls[-1].bias.fill_(math.log(5 / self.num_classes / (640 / stride) ** 2))

    def forward(self, feats: Sequence[torch.Tensor]) -> RawOutputs:
        """Neck outputs (P3, P4, P5) -> :class:`RawOutputs`, in train and eval mode alike
        (:func:`cocoseg.model.decode.decode` turns them into boxes and scores)."""
        proto = self.proto(feats[0])  # (B, nm, H/4, W/4)
        batch = proto.shape[0]
        levels = list(zip(self.cv2, self.cv3, self.cv4, feats, strict=True))
        coeffs = torch.cat([mask(x).view(batch, self.num_masks, -1) for _, _, mask, x in levels], 2)  # (B, nm, A)
        maps = [torch.cat((box(x), cls(x)), 1) for box, cls, _, x in levels]
        return RawOutputs(maps, coeffs, proto)
