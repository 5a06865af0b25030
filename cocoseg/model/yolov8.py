"""The YOLOv8-seg family (n/s/m/l/x) as plain PyTorch (spec sections 3-6).

The five variants differ only by the scale table :data:`VARIANTS`; :func:`build_model` is the
one constructor. Layers live in ``self.model`` (a ModuleList indexed 0..22 exactly like the
reference layer graph) so the state-dict keys are the reference's (``model.0.conv.weight``,
``model.22.cv2.0.0.conv.weight``, ...) and reference weights load with ``load_state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cocoseg.structures import RawOutputs
from cocoseg.utils import UserError

from .blocks import SPPF, C2f, Conv
from .head import SegmentHead

__all__ = ["VARIANTS", "ModelError", "Scale", "SegmentationModel", "build_model"]

STRIDES = (8, 16, 32)  # of P3, P4, P5; fixed by the five stride-2 convolutions before them
NUM_MASKS = 32
REG_MAX = 16


class ModelError(UserError):
    """A model that cannot be built or run as asked (unknown variant, bad input size)."""


@dataclass(frozen=True)
class Scale:
    """Depth multiple (C2f repeats), width multiple (channels) and the channel cap."""

    depth: float
    width: float
    max_channels: int

    def channels(self, base: int) -> int:
        """Scaled width, rounded up to a multiple of 8."""
        return int(math.ceil(min(base, self.max_channels) * self.width / 8) * 8)

    def repeats(self, base: int) -> int:
        """Scaled C2f repeat count (Python's round(), i.e. banker's rounding, as the reference)."""
        return max(round(base * self.depth), 1) if base > 1 else base


VARIANTS: dict[str, Scale] = {
    "n": Scale(0.33, 0.25, 1024),
    "s": Scale(0.33, 0.50, 1024),
    "m": Scale(0.67, 0.75, 768),
    "l": Scale(1.00, 1.00, 512),
    "x": Scale(1.00, 1.25, 512),
}


class Upsample2x(nn.Upsample):
    """Nearest-neighbour x2 (a module so that layer indices match the reference graph)."""

    def __init__(self) -> None:
        super().__init__(scale_factor=2, mode="nearest")


class Concat(nn.Module):
    """Channel concatenation (parameter-free placeholder keeping the reference layer indices)."""

    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors, 1)


class SegmentationModel(nn.Module):
    """YOLOv8-seg: CSP-Darknet backbone, PAN neck, segmentation head.

    Input: (B, 3, H, W) float RGB in [0, 1], H and W multiples of 32.

    Output, in train and eval mode alike: :class:`~cocoseg.structures.RawOutputs`
    ``(feats, mask_coeffs, proto)``: feats (B, 64 + nc, H/s, W/s) for s = 8, 16, 32 (DFL box
    logits then class logits); mask_coeffs (B, 32, A); proto (B, 32, H/4, W/4), with A = sum of
    H/s * W/s. The mode changes only BatchNorm. :func:`cocoseg.model.decode.decode` turns them
    into ``(pred, proto)``: pred (B, 4 + nc + 32, A) = box (cx, cy, w, h) in input pixels,
    sigmoid class scores, raw mask coefficients; anchors P3 -> P5, row-major.

    Exposed for the loss and post-processing: ``stride`` (tensor [8, 16, 32], follows
    ``.to()``), ``num_classes``, ``reg_max``, ``num_masks``, ``variant``.
    """

    def __init__(self, variant: str, num_classes: int = 80) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ModelError(f"unknown model variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.variant = variant
        self.num_classes = num_classes
        self.reg_max = REG_MAX
        self.num_masks = NUM_MASKS
        sc = VARIANTS[variant]
        c64, c128, c256, c512, c1024 = (sc.channels(c) for c in (64, 128, 256, 512, 1024))
        r3, r6 = sc.repeats(3), sc.repeats(6)
        self.model = nn.ModuleList([
            Conv(3, c64, 3, 2),                              # 0  P1/2
            Conv(c64, c128, 3, 2),                           # 1  P2/4
            C2f(c128, c128, r3, shortcut=True),              # 2
            Conv(c128, c256, 3, 2),                          # 3  P3/8
            C2f(c256, c256, r6, shortcut=True),              # 4  -> 14
            Conv(c256, c512, 3, 2),                          # 5  P4/16
            C2f(c512, c512, r6, shortcut=True),              # 6  -> 11
            Conv(c512, c1024, 3, 2),                         # 7  P5/32
            C2f(c1024, c1024, r3, shortcut=True),            # 8
            SPPF(c1024, c1024, 5),                           # 9  -> 20
            Upsample2x(),                                    # 10
            Concat(),                                        # 11 [10, 6]
            C2f(c1024 + c512, c512, r3, shortcut=False),     # 12 -> 17
            Upsample2x(),                                    # 13
            Concat(),                                        # 14 [13, 4]
            C2f(c512 + c256, c256, r3, shortcut=False),      # 15 head P3
            Conv(c256, c256, 3, 2),                          # 16
            Concat(),                                        # 17 [16, 12]
            C2f(c256 + c512, c512, r3, shortcut=False),      # 18 head P4
            Conv(c512, c512, 3, 2),                          # 19
            Concat(),                                        # 20 [19, 9]
            C2f(c512 + c1024, c1024, r3, shortcut=False),    # 21 head P5
            SegmentHead(num_classes, (c256, c512, c1024), STRIDES, sc.channels(256), NUM_MASKS, REG_MAX),
        ])
        # Not persistent: keeps the state dict identical to the reference's 417 entries.
        self.register_buffer("stride", torch.tensor(STRIDES, dtype=torch.float32), persistent=False)

    @property
    def head(self) -> SegmentHead:
        return self.model[22]

    def forward(self, images: torch.Tensor) -> RawOutputs:
        if not torch.jit.is_tracing():
            _check_input(images)
        m = self.model
        x = m[1](m[0](images))
        x = m[2](x)
        p3_backbone = m[4](m[3](x))
        p4_backbone = m[6](m[5](p3_backbone))
        p5_backbone = m[9](m[8](m[7](p4_backbone)))
        # Top-down path: upsample, concatenate the skip (upsampled tensor first), C2f.
        p4_top_down = m[12](m[11]([m[10](p5_backbone), p4_backbone]))
        p3_out = m[15](m[14]([m[13](p4_top_down), p3_backbone]))
        # Bottom-up path: stride-2 conv, concatenate, C2f.
        p4_out = m[18](m[17]([m[16](p3_out), p4_top_down]))
        p5_out = m[21](m[20]([m[19](p4_out), p5_backbone]))
        return self.head([p3_out, p4_out, p5_out])

    @torch.no_grad()
    def fuse(self) -> SegmentationModel:
        """Fold every BatchNorm into its convolution (inference only; outputs unchanged up to
        float rounding). Returns self, for chaining."""
        for module in self.modules():
            if isinstance(module, Conv):
                module.fuse()
        return self


def _check_input(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ModelError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    height, width = int(images.shape[2]), int(images.shape[3])
    if height % 32 or width % 32 or height == 0 or width == 0:
        raise ModelError(f"image sides must be positive multiples of 32 (letterbox first), got {height}x{width}")


def build_model(variant: str, num_classes: int = 80) -> SegmentationModel:
    """A freshly initialised YOLOv8-seg of the given variant ("n", "s", "m", "l" or "x")."""
    return SegmentationModel(variant, num_classes)
