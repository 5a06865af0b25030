"""The shared vocabulary: class maps, the training batch, raw model outputs, detections.

Coordinate conventions are in the names: ``_xyxy`` / ``_cxcywh`` / ``_xywh`` (COCO's top-left
x, y, width, height), ``_norm`` for 0..1 of the image size, ``_px`` (or no suffix) for pixels.

This module imports nothing from cocoseg (layer L0).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # annotations only: the class maps must not cost a torch import (ingest, Ray Data)
    import torch

__all__ = [
    "COCO80_TO_COCO91",
    "COCO91_TO_COCO80",
    "COCO_CLASS_NAMES",
    "Detections",
    "LETTERBOX_WIDTH",
    "LetterboxParams",
    "NO_LETTERBOX",
    "RawOutputs",
    "SegTargets",
    "TrainBatch",
    "letterbox_params",
]

# Contiguous class index 0..79 -> COCO 2017 category id (1..90, with gaps), spec section 12.
COCO80_TO_COCO91: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

COCO_CLASS_NAMES: tuple[str, ...] = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus',
    'train', 'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
    'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse',
    'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe',
    'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove',
    'skateboard', 'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup',
    'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza',
    'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed',
    'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush',
)

# COCO category id -> contiguous class index (ids that do not occur in COCO 2017 are absent).
COCO91_TO_COCO80: dict[int, int] = {cid: idx for idx, cid in enumerate(COCO80_TO_COCO91)}


@dataclass
class SegTargets:
    """Ground truth of one training batch, as the loss consumes it (spec section 7, 8.6).

    N instances over B images, network input H x W:

    - ``batch_idx``: (N,) int64, the image of each instance within the batch.
    - ``cls``: (N,) int64, contiguous class index 0..nc-1.
    - ``boxes_cxcywh_norm``: (N, 4) float32, box centre/size normalised by W and H.
    - ``masks``: (B, H/4, W/4) int32 *overlap maps*: pixel value k >= 1 means the k-th instance
      of that image (1-based, in the order the image's instances appear in the rows above); 0 is
      background. An image without instances has an all-zero map.
    """

    batch_idx: torch.Tensor
    cls: torch.Tensor
    boxes_cxcywh_norm: torch.Tensor
    masks: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SegTargets:
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self)})

    @property
    def num_instances(self) -> int:
        return int(self.cls.shape[0])


@dataclass
class TrainBatch:
    """A collated batch: ``images`` is (B, 3, H, W) uint8 RGB; the model wants ``images / 255``."""

    images: torch.Tensor
    targets: SegTargets
    image_ids: torch.Tensor | None = None  # (B,) int64 COCO image ids, when known

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        ids = self.image_ids.to(device) if self.image_ids is not None else None
        return TrainBatch(self.images.to(device, non_blocking=non_blocking),
                          self.targets.to(device, non_blocking=non_blocking), ids)


class RawOutputs(NamedTuple):
    """The network's output in train and eval mode alike (classic YOLOv8 layout, spec 5.1);
    ``cocoseg.model.decode`` turns it into ``(pred, proto)``.

    - ``feats``: three maps (P3, P4, P5), each (B, 4*reg_max + nc, H_i, W_i): box DFL logits then
      class logits.
    - ``mask_coeffs``: (B, 32, A) mask coefficients, anchors P3 -> P5 row-major.
    - ``proto``: (B, 32, H/4, W/4) SiLU-activated prototypes.
    """

    feats: list[torch.Tensor]
    mask_coeffs: torch.Tensor
    proto: torch.Tensor


@dataclass
class Detections:
    """Post-processed detections of one image, in *original image* pixels.

    - ``boxes_xyxy``: (n, 4) float32; ``scores``: (n,) float32; ``classes``: (n,) int64 (0..nc-1);
    - ``masks``: (n, H0, W0) bool at the original image size, or None when not computed;
    - ``masks_rle``: the same masks as COCO compressed RLEs (``{"size": [H0, W0], "counts": str}``),
      when post-processing was asked for RLEs (evaluation, JSON outputs) instead of dense masks.
    """

    boxes_xyxy: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor | None = None
    masks_rle: list[dict] | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# Letterbox geometry (spec 8.5), shared by the data side (cocoseg.data.letterbox, which
# resizes and pads images) and post-processing (which maps predictions back).


@dataclass(frozen=True)
class LetterboxParams:
    """How an ``orig_hw`` image was placed into an ``out_hw`` canvas.

    ``resized_hw`` is the size after scaling by ``gain``; ``pad_left``/``pad_top`` in pixels.
    Made once, where the image is letterboxed (:func:`letterbox_params`), and carried to the
    predictor: through a column batch as :meth:`to_array` rows (the ``letterbox`` column of
    ``cocoseg.data.stage``), back with :meth:`from_array`.
    """

    orig_hw: tuple[int, int]
    out_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    gain: float
    pad_left: int
    pad_top: int

    @property
    def pad(self) -> tuple[int, int]:
        return self.pad_left, self.pad_top

    def to_array(self) -> np.ndarray:
        """(9,) float64 ``[orig_h, orig_w, out_h, out_w, resized_h, resized_w, gain, pad_left, pad_top]``
        (float64: the gain comes back bit for bit)."""
        return np.array([*self.orig_hw, *self.out_hw, *self.resized_hw, self.gain, self.pad_left, self.pad_top],
                        np.float64)

    @classmethod
    def from_array(cls, row: np.ndarray) -> LetterboxParams:
        """The inverse of :meth:`to_array`."""
        oh, ow, h, w, rh, rw, gain, left, top = (float(v) for v in row)
        return cls(orig_hw=(int(oh), int(ow)), out_hw=(int(h), int(w)), resized_hw=(int(rh), int(rw)), gain=gain,
                   pad_left=int(left), pad_top=int(top))


LETTERBOX_WIDTH = 9  # values per LetterboxParams.to_array row
NO_LETTERBOX = np.full(LETTERBOX_WIDTH, np.nan)  # the row of an image with no letterbox inverse (mosaic, affine, flip)
NO_LETTERBOX.flags.writeable = False


def letterbox_params(orig_hw: tuple[int, int], out_hw: tuple[int, int], *, scaleup: bool = True) -> LetterboxParams:
    """Spec 8.5: r = min(H/h, W/w) (capped at 1 without ``scaleup``), padding split around the image."""
    h0, w0 = orig_hw
    h, w = out_hw
    r = min(h / h0, w / w0)
    if not scaleup:
        r = min(r, 1.0)
    rh, rw = max(1, round(h0 * r)), max(1, round(w0 * r))
    dh, dw = (h - rh) / 2, (w - rw) / 2
    # round(d - 0.1) / round(d + 0.1) splits an odd remainder one pixel more to the bottom/right
    return LetterboxParams(orig_hw=(h0, w0), out_hw=(h, w), resized_hw=(rh, rw), gain=r,
                           pad_left=round(dw - 0.1), pad_top=round(dh - 0.1))
