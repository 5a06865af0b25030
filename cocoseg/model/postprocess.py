"""Post-processing of YOLOv8-seg outputs (spec 5.2, 10): decode, NMS, masks, inverse letterbox, RLE.

Pipeline for one batch of decoded outputs ``pred`` (B, 4 + nc + 32, A) and ``proto``
(B, 32, H/4, W/4) of an (H, W) network input (:func:`decode`, re-exported here, is the one
decoding of the model's raw outputs; an ONNX export's ``pred``/``proto`` are already decoded)::

    pred, proto = decode(model(images))
    detections = postprocess(pred, proto, letterboxes=[LetterboxParams, ...])

gives one :class:`~cocoseg.structures.Detections` per image, boxes and masks in *original image*
pixels. Evaluation defaults (conf 0.001, IoU 0.7, 300 detections, multi-label, class-aware) are
the keyword defaults; ``cocoseg predict`` uses conf 0.25 and one label per box.

The letterbox geometry is one type, :class:`~cocoseg.structures.LetterboxParams` (spec 8.5, made
by :func:`cocoseg.structures.letterbox_params`), from decode to here.

Masks follow the spec's native path (logits upsampled bilinearly to the input, cropped with the
box, > 0, un-padded, resized bilinearly to the original, >= 0.5) but are computed only inside each
box: outside it the cropped map is 0 and stays 0 through the resize, so the result is the same
while the work is the box area instead of the image area per detection (up to 300 per image at
the evaluation conf). :func:`process_masks` / :func:`masks_to_original` are the dense, spec-literal
form that the tests check the fast path against. :func:`encode_rle` is the one mask-to-RLE encoder.

Pure torch, no torchvision: NMS is greedy, solved a block of candidates at a time (see :func:`nms`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from cocoseg.structures import Detections, LetterboxParams, letterbox_params

from .decode import decode

__all__ = [
    "CLASS_OFFSET_PX",
    "MaskCrop",
    "box_iou",
    "decode",
    "encode_rle",
    "letterbox_params",
    "mask_crops",
    "masks_to_original",
    "masks_to_rle",
    "nms",
    "non_max_suppression",
    "paste_masks",
    "postprocess",
    "process_masks",
    "scale_boxes_to_original",
]

CLASS_OFFSET_PX = 7680.0  # class-aware NMS shifts boxes by class * this, so classes never overlap
NMS_BLOCK = 512  # candidates whose pairwise IoUs are solved at once


# ------------------------------------------------------------------------------------------ NMS


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (n, 4) and (m, 4) xyxy boxes -> (n, m)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(0)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(0).prod(-1)
    return inter / (area1[:, None] + area2[None, :] - inter).clamp(min=1e-12)


def _greedy_block(over: torch.Tensor) -> torch.Tensor:
    """Greedy NMS inside a block: ``over`` (k, k) bool = IoU > threshold, rows/cols by descending
    score -> (k,) bool kept. One pass over the rows of the precomputed matrix (cheap numpy row ops)."""
    rows = over.cpu().numpy()
    suppressed = np.zeros(rows.shape[0], dtype=bool)
    keep = np.zeros(rows.shape[0], dtype=bool)
    for j in range(rows.shape[0]):
        if not suppressed[j]:
            keep[j] = True
            suppressed |= rows[j]
    return torch.from_numpy(keep).to(over.device)


def nms(boxes_xyxy: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        max_keep: int | None = None) -> torch.Tensor:
    """Greedy NMS: indices (k,) of kept boxes by descending score, at most ``max_keep`` of them.

    A box is dropped when its IoU with an already kept, higher-scoring box exceeds the threshold.
    The surviving candidates are taken :data:`NMS_BLOCK` at a time: the block is solved exactly
    (:func:`_greedy_block`), then its kept boxes suppress everything after it, so the work is a
    few matrix operations per block rather than one Python iteration per kept box.
    """
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes_xyxy[order]
    limit = order.shape[0] if max_keep is None else min(max_keep, order.shape[0])
    alive = torch.arange(order.shape[0], device=boxes.device)
    kept: list[torch.Tensor] = []
    count = 0
    while alive.numel() and count < limit:
        block, alive = alive[:NMS_BLOCK], alive[NMS_BLOCK:]
        block_boxes = boxes[block]
        winners = block[_greedy_block(box_iou(block_boxes, block_boxes) > iou_threshold)]
        kept.append(winners)
        count += winners.numel()
        if alive.numel() and count < limit:
            alive = alive[~(box_iou(boxes[winners], boxes[alive]) > iou_threshold).any(0)]
    if not kept:
        return order[:0]
    return order[torch.cat(kept)[:limit]]


def non_max_suppression(pred: torch.Tensor, *, num_masks: int = 32, conf: float = 0.001, iou: float = 0.7,
                        max_det: int = 300, multi_label: bool = True, agnostic: bool = False,
                        max_nms: int = 30000) -> list[torch.Tensor]:
    """Per image NMS of eval-layout ``pred`` (B, 4 + nc + num_masks, A) (spec 10.1).

    Returns, per image, (n, 6 + num_masks) rows ``[x1, y1, x2, y2, score, class, coeffs...]`` in
    input pixels, sorted by descending score, n <= max_det.
    """
    num_classes = pred.shape[1] - 4 - num_masks
    out = []
    for rows in pred.transpose(1, 2):  # (A, 4 + nc + nm), one image at a time
        cxcywh, probs, coeffs = rows.split((4, num_classes, num_masks), 1)
        xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)
        if multi_label:
            anchor, cls = (probs > conf).nonzero(as_tuple=True)
            score = probs[anchor, cls]
        else:
            score, cls = probs.max(1)
            anchor = (score > conf).nonzero(as_tuple=True)[0]
            score, cls = score[anchor], cls[anchor]
        if score.shape[0] > max_nms:
            top = score.topk(max_nms).indices
            anchor, cls, score = anchor[top], cls[top], score[top]
        offset = 0.0 if agnostic else cls[:, None].to(xyxy.dtype) * CLASS_OFFSET_PX
        kept = nms(xyxy[anchor] + offset, score, iou, max_det)
        anchor, cls, score = anchor[kept], cls[kept], score[kept]
        out.append(torch.cat((xyxy[anchor], score[:, None], cls[:, None].to(xyxy.dtype), coeffs[anchor]), 1))
    return out


# ---------------------------------------------------------------------------- letterbox inverse


def scale_boxes_to_original(boxes_xyxy: torch.Tensor, lb: LetterboxParams) -> torch.Tensor:
    """(n, 4) input-pixel boxes -> original-image pixels: remove padding, divide by gain, clip."""
    pad = boxes_xyxy.new_tensor([lb.pad_left, lb.pad_top, lb.pad_left, lb.pad_top])
    out = (boxes_xyxy - pad) / lb.gain
    out[:, 0::2] = out[:, 0::2].clamp(0, lb.orig_hw[1])
    out[:, 1::2] = out[:, 1::2].clamp(0, lb.orig_hw[0])
    return out


def masks_to_original(masks: torch.Tensor, lb: LetterboxParams) -> torch.Tensor:
    """Dense reference: (n, H, W) bool input-frame masks -> (n, h0, w0) bool: cut the padding,
    resize bilinearly, keep values >= 0.5 (as an 8-bit bilinear resize of a 0/1 map would)."""
    h0, w0 = lb.orig_hw
    rh, rw = lb.resized_hw
    inner = masks[:, lb.pad_top:lb.pad_top + rh, lb.pad_left:lb.pad_left + rw]
    if masks.shape[0] == 0:
        return torch.zeros(0, h0, w0, dtype=torch.bool, device=masks.device)
    resized = F.interpolate(inner[:, None].float(), (h0, w0), mode="bilinear", align_corners=False)
    return resized[:, 0] >= 0.5


# -------------------------------------------------------------------------------------- masks


def crop_to_boxes(values: torch.Tensor, boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """Zero (n, h, w) ``values`` outside each row's box (same pixel units): keep x1 <= col < x2."""
    _, h, w = values.shape
    cols = torch.arange(w, device=values.device, dtype=boxes_xyxy.dtype)[None, None, :]
    rows = torch.arange(h, device=values.device, dtype=boxes_xyxy.dtype)[None, :, None]
    x1, y1, x2, y2 = (boxes_xyxy[:, i, None, None] for i in range(4))
    return values * ((cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2))


def process_masks(proto: torch.Tensor, coeffs: torch.Tensor, boxes_xyxy: torch.Tensor,
                  input_hw: tuple[int, int], upsample: bool = True) -> torch.Tensor:
    """Dense reference of spec 10.2 for one image.

    ``proto`` (32, h, w), ``coeffs`` (n, 32), ``boxes_xyxy`` (n, 4) in input pixels.
    ``upsample=True`` (the native path): logits upsampled bilinearly to ``input_hw`` first, then
    cropped with the boxes and thresholded at 0 -> (n, H, W) bool. ``upsample=False``: cropped and
    thresholded at proto resolution -> (n, h, w) bool.
    """
    _, h, w = proto.shape
    logits = (coeffs @ proto.flatten(1)).view(-1, h, w)
    if upsample:
        logits = F.interpolate(logits[:, None], input_hw, mode="bilinear", align_corners=False)[:, 0]
        return crop_to_boxes(logits, boxes_xyxy) > 0
    scale = boxes_xyxy.new_tensor([w / input_hw[1], h / input_hw[0], w / input_hw[1], h / input_hw[0]])
    return crop_to_boxes(logits, boxes_xyxy * scale) > 0


class MaskCrop:
    """One instance mask in the original frame: ``crop`` (h, w) bool placed at (``top``, ``left``);
    every pixel outside it is 0. ``crop`` may be empty."""

    __slots__ = ("crop", "left", "top")

    def __init__(self, top: int, left: int, crop: np.ndarray) -> None:
        self.top, self.left, self.crop = top, left, crop


def _axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (align_corners=False) sources of each output index, as torch computes them:
    ``lo``, ``hi`` (int64) and the weights ``w_lo``, ``w_hi`` (float32)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    lo = src.astype(np.int64)
    hi = lo + (lo < n_in - 1)
    w_hi = src - lo.astype(np.float32)
    return lo, hi, np.float32(1) - w_hi, w_hi


def _resize_crop(crop: np.ndarray, r0: int, c0: int, axes_y, axes_x) -> MaskCrop:
    """Bilinear resize (>= 0.5) of a 0/1 ``crop`` placed at (r0, c0) of the un-padded input frame,
    evaluated only on the original-frame rows/columns whose sources touch the crop."""
    (ly, hy, wly, why), (lx, hx, wlx, whx) = axes_y, axes_x
    hb, wb = crop.shape
    y0, y1 = int(np.searchsorted(hy, r0, "left")), int(np.searchsorted(ly, r0 + hb - 1, "right"))
    x0, x1 = int(np.searchsorted(hx, c0, "left")), int(np.searchsorted(lx, c0 + wb - 1, "right"))
    padded = np.zeros((hb + 2, wb + 2), np.float32)  # a zero border stands for "outside the crop"
    padded[1:-1, 1:-1] = crop
    iy_lo, iy_hi = (np.clip(a[y0:y1] - r0 + 1, 0, hb + 1) for a in (ly, hy))
    ix_lo, ix_hi = (np.clip(a[x0:x1] - c0 + 1, 0, wb + 1) for a in (lx, hx))
    a, b = padded[iy_lo], padded[iy_hi]
    # the order of torch's kernel: h_lo * (w_lo * x00 + w_hi * x01) + h_hi * (w_lo * x10 + w_hi * x11)
    value = (wly[y0:y1, None] * (wlx[x0:x1] * a[:, ix_lo] + whx[x0:x1] * a[:, ix_hi])
             + why[y0:y1, None] * (wlx[x0:x1] * b[:, ix_lo] + whx[x0:x1] * b[:, ix_hi]))
    return MaskCrop(y0, x0, value >= 0.5)


def mask_crops(proto: torch.Tensor, coeffs: torch.Tensor, boxes_xyxy: torch.Tensor,
               lb: LetterboxParams) -> list[MaskCrop]:
    """The native-path masks of one image in the original frame, computed inside each box only.

    ``proto`` (32, h, w) with the input ``lb.out_hw`` = (f h, f w); ``coeffs`` (n, 32);
    ``boxes_xyxy`` (n, 4) in input pixels. A proto block around the box (one cell of margin, so
    the border samples match the full-frame interpolation exactly) is upsampled by f, cut to the
    box's pixels (x1 <= col < x2) inside the un-padded image and thresholded at 0; it is then
    resized to the original frame (:func:`_resize_crop`) unless the gain is 1.
    """
    _, ph, pw = proto.shape
    height, width = lb.out_hw
    factor = height // ph
    if factor * ph != height or factor * pw != width:
        raise ValueError(f"proto {ph}x{pw} is not an integer fraction of the input {height}x{width}")
    logits = (coeffs.float() @ proto.float().flatten(1)).view(-1, ph, pw).cpu()
    rh, rw = lb.resized_hw
    top, left = lb.pad_top, lb.pad_left
    identity = lb.resized_hw == lb.orig_hw
    axes_y, axes_x = (None, None) if identity else (_axis(lb.orig_hw[0], rh), _axis(lb.orig_hw[1], rw))
    bounds = boxes_xyxy.detach().double().cpu().numpy()
    crops = []
    for i, (x1, y1, x2, y2) in enumerate(bounds.tolist()):
        r0, r1 = max(math.ceil(y1), top), min(math.ceil(y2), top + rh)
        c0, c1 = max(math.ceil(x1), left), min(math.ceil(x2), left + rw)
        if r0 >= r1 or c0 >= c1:
            crops.append(MaskCrop(0, 0, np.zeros((0, 0), bool)))
            continue
        q0, q1 = max(r0 // factor - 1, 0), min((r1 - 1) // factor + 2, ph)
        p0, p1 = max(c0 // factor - 1, 0), min((c1 - 1) // factor + 2, pw)
        up = F.interpolate(logits[i, q0:q1, p0:p1][None, None], size=(factor * (q1 - q0), factor * (p1 - p0)),
                           mode="bilinear", align_corners=False)[0, 0]
        crop = (up[r0 - factor * q0:r1 - factor * q0, c0 - factor * p0:c1 - factor * p0] > 0).numpy()
        if identity:
            crops.append(MaskCrop(r0 - top, c0 - left, crop))
        else:
            crops.append(_resize_crop(crop, r0 - top, c0 - left, axes_y, axes_x))
    return crops


def paste_masks(crops: Sequence[MaskCrop], hw: tuple[int, int]) -> torch.Tensor:
    """Crops -> (n, h, w) bool full-frame masks."""
    out = np.zeros((len(crops), *hw), dtype=bool)
    for i, c in enumerate(crops):
        out[i, c.top:c.top + c.crop.shape[0], c.left:c.left + c.crop.shape[1]] = c.crop
    return torch.from_numpy(out)


def encode_rle(crops: Sequence[MaskCrop], hw: tuple[int, int], *, compressed: bool = True) -> list[dict[str, Any]]:
    """The one mask-to-RLE encoder: crops in an (h, w) frame -> COCO compressed RLEs
    (``{"size": [h, w], "counts": str}``, column-major runs starting with zeros), the same as
    ``pycocotools.mask.encode`` of the full masks. ``compressed=False``: the same runs as COCO
    *uncompressed* RLE (``"counts"`` a list of ints summing to h * w; what the served model
    answers, readable without pycocotools)."""
    height, width = int(hw[0]), int(hw[1])
    objects = []
    for c in crops:
        hb, wb = c.crop.shape
        if not c.crop.any():
            counts = np.array([height * width], np.int64)
        else:
            padded = np.zeros((wb, hb + 2), np.int8)  # column-major: one row per image column
            padded[:, 1:-1] = c.crop.T
            cols, rows = np.nonzero(np.diff(padded, axis=1))
            change = (c.left + cols) * height + c.top + rows  # flat column-major index of each value change
            if change.size > 1:  # a run that ends at a column's bottom and restarts at the next top is one run
                tied = change[1:] == change[:-1]
                drop = np.zeros(change.size, bool)
                drop[1:] |= tied
                drop[:-1] |= tied
                change = change[~drop]
            counts = np.diff(np.concatenate(([0], change, [height * width])))
            if counts[-1] == 0:  # ends on a run of ones: no empty closing run of zeros
                counts = counts[:-1]
        objects.append({"size": [height, width], "counts": counts.tolist()})
    if not objects or not compressed:
        return objects
    encoded = mask_utils.frPyObjects(objects, height, width)
    return [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in encoded]


def masks_to_rle(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """(n, h, w) bool full-frame masks -> COCO compressed RLEs (through :func:`encode_rle`)."""
    array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    return encode_rle([MaskCrop(0, 0, m.astype(bool)) for m in array], tuple(array.shape[1:]))


# ---------------------------------------------------------------------------------- all at once


def postprocess(pred: torch.Tensor, proto: torch.Tensor, *, letterboxes: Sequence[LetterboxParams] | None = None,
                input_hw: tuple[int, int] | None = None, orig_hw: Sequence[tuple[int, int]] | None = None,
                conf: float = 0.001, iou: float = 0.7, max_det: int = 300, multi_label: bool = True,
                agnostic: bool = False, masks: str = "full") -> list[Detections]:
    """Eval-mode outputs -> one :class:`Detections` per image in original-image pixels.

    ``pred`` (B, 4 + nc + 32, A), ``proto`` (B, 32, H/4, W/4). ``letterboxes``: how each image
    was placed in the (H, W) input; by default :func:`letterbox_params` of each ``orig_hw``
    (default: the input size, i.e. no letterbox) into ``input_hw`` (default 4 x the proto size).
    ``masks``: ``"full"`` -> ``Detections.masks`` (n, h0, w0) bool; ``"rle"`` ->
    ``Detections.masks_rle`` (COCO compressed RLEs, what evaluation and the JSON outputs need);
    ``"rle_counts"`` -> the same runs uncompressed (``counts`` int lists: the served model's
    answer); ``"none"``.
    """
    if masks not in ("full", "rle", "rle_counts", "none"):
        raise ValueError(f"masks={masks!r}: use 'full', 'rle', 'rle_counts' or 'none'")
    input_hw = input_hw or (letterboxes[0].out_hw if letterboxes else (proto.shape[2] * 4, proto.shape[3] * 4))
    if letterboxes is None:
        sizes = list(orig_hw) if orig_hw is not None else [input_hw] * pred.shape[0]
        letterboxes = [letterbox_params(tuple(s), input_hw) for s in sizes]
    rows_per_image = non_max_suppression(pred.detach(), num_masks=proto.shape[1], conf=conf, iou=iou,
                                         max_det=max_det, multi_label=multi_label, agnostic=agnostic)
    results = []
    for b, rows in enumerate(rows_per_image):
        lb = letterboxes[b]
        det = Detections(boxes_xyxy=scale_boxes_to_original(rows[:, :4], lb).float(), scores=rows[:, 4].float(),
                         classes=rows[:, 5].long())
        if masks != "none":
            crops = mask_crops(proto[b].detach(), rows[:, 6:], rows[:, :4], lb)
            if masks == "full":
                det.masks = paste_masks(crops, lb.orig_hw).to(proto.device)
            else:
                det.masks_rle = encode_rle(crops, lb.orig_hw, compressed=masks == "rle")
        results.append(det)
    return results
