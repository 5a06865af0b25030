"""Column batches of augmented rows -> :class:`~cocoseg.structures.TrainBatch` / :class:`ValBatch`.

The input is what :class:`cocoseg.data.stage.AugmentBatch` produces (and what Ray Data's
``iter_batches(batch_format="numpy")`` hands back): ``image`` (B, S, S, 3) uint8 (HWC rows), ``masks``
(B, S/r, S/r) integer overlap maps (r = ``train.mask_ratio``; uint8 up to 255 instances), ``labels`` per image either float32 bytes or an (n, 5) array of
``[class, cx, cy, w, h]`` (box normalised), ``image_id`` (B,), and for validation ``orig_hw``
(B, 2) and ``letterbox`` (B, 9) float64 :class:`~cocoseg.structures.LetterboxParams` rows.

Images and masks are wrapped without a copy when they are already contiguous. This runs on the
train worker (the only per-batch work it does besides the step itself).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cocoseg.data.letterbox import to_original_boxes
from cocoseg.structures import LETTERBOX_WIDTH, LetterboxParams, SegTargets, TrainBatch

__all__ = ["ValBatch", "collate_train", "collate_val", "labels_array"]


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Wrap without copying. Ray hands out read-only views of its object store; torch would warn
    about those, but nothing here writes into a batch in place (the model divides into a new
    tensor), so the view is kept rather than paying a copy per batch."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def labels_array(labels: Any) -> np.ndarray:
    """One image's labels (bytes or array-like) -> (n, 5) float32."""
    if isinstance(labels, (bytes, bytearray, memoryview)):
        return np.frombuffer(labels, dtype=np.float32).reshape(-1, 5)
    return np.asarray(labels, dtype=np.float32).reshape(-1, 5)


def _targets(batch: Mapping[str, Any]) -> SegTargets:
    per_image = [labels_array(x) for x in batch["labels"]]
    counts = np.fromiter((len(x) for x in per_image), dtype=np.int64, count=len(per_image))
    labels = np.concatenate(per_image) if counts.sum() else np.zeros((0, 5), np.float32)
    masks = np.ascontiguousarray(batch["masks"])
    if masks.dtype not in (np.uint8, np.int16, np.int32):
        masks = masks.astype(np.int32)
    return SegTargets(
        batch_idx=torch.from_numpy(np.repeat(np.arange(len(per_image), dtype=np.int64), counts)),
        cls=torch.from_numpy(labels[:, 0].astype(np.int64)),
        boxes_cxcywh_norm=torch.from_numpy(np.ascontiguousarray(labels[:, 1:5])),
        masks=_tensor(masks),
    )


def collate_train(batch: Mapping[str, Any]) -> TrainBatch:
    """Column batch -> TrainBatch: images (B, 3, H, W) uint8, targets with (B, H/r, W/r) integer overlap maps.

    ``images`` is a view in ``torch.channels_last`` memory format (what the GPU path wants); call
    ``.contiguous()`` for a plain NCHW layout. Tensors may share memory with Ray's read-only
    object store: do not modify them in place.
    """
    # (B, H, W, 3) rows -> (B, 3, H, W) view: NCHW shape, channels_last strides, no copy
    images = _tensor(np.ascontiguousarray(batch["image"], dtype=np.uint8)).permute(0, 3, 1, 2)
    ids = batch.get("image_id")
    return TrainBatch(images=images, targets=_targets(batch),
                      image_ids=_tensor(np.asarray(ids, np.int64)) if ids is not None else None)


@dataclass
class ValBatch:
    """A validation batch: letterboxed images plus what maps predictions back to the originals.

    - ``images`` (B, 3, S, S) uint8, ``targets`` as in training (for a validation loss);
    - ``image_ids`` (B,) int64 COCO image ids;
    - ``orig_hw`` (B, 2) int64 original (height, width) in pixels;
    - ``letterboxes``: per image, the :class:`~cocoseg.structures.LetterboxParams` the stage
      letterboxed it with (an original point ``p`` sits at ``p * gain + pad``); the predictor maps
      its detections back with these, recomputing nothing.
    """

    images: torch.Tensor
    targets: SegTargets
    image_ids: torch.Tensor
    orig_hw: torch.Tensor
    letterboxes: tuple[LetterboxParams, ...]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ValBatch:
        return ValBatch(self.images.to(device, non_blocking=non_blocking),
                        self.targets.to(device, non_blocking=non_blocking), self.image_ids.to(device),
                        self.orig_hw.to(device), self.letterboxes)

    def boxes_to_original(self, index: int, boxes_xyxy: np.ndarray | torch.Tensor) -> np.ndarray:
        """(n, 4) xyxy in letterboxed pixels of image ``index`` -> original pixels, clipped."""
        boxes = boxes_xyxy.detach().cpu().numpy() if isinstance(boxes_xyxy, torch.Tensor) else boxes_xyxy
        lb = self.letterboxes[index]
        return to_original_boxes(boxes, lb.gain, lb.pad, lb.orig_hw)


def collate_val(batch: Mapping[str, Any]) -> ValBatch:
    """Column batch of the ``"val"`` preset -> ValBatch. Refuses rows without letterbox parameters."""
    letterbox = np.asarray(batch["letterbox"], np.float64).reshape(-1, LETTERBOX_WIDTH)
    if np.isnan(letterbox).any():
        raise ValueError("collate_val needs rows of the 'val' preset: some rows went through mosaic, "
                         "affine or flip and have no letterbox parameters")
    train = collate_train(batch)
    return ValBatch(images=train.images, targets=train.targets,
                    image_ids=_tensor(np.asarray(batch["image_id"], np.int64)),
                    orig_hw=_tensor(np.asarray(batch["orig_hw"], np.int64).reshape(-1, 2)),
                    letterboxes=tuple(LetterboxParams.from_array(row) for row in letterbox))
