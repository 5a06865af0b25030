"""Post-processing of YOLOv8-seg outputs (spec 5.2, 10): decode, NMS, masks, inverse letterbox.

Pipeline for one batch of eval-mode outputs ``pred`` (B, 4 + nc + 32, A) and ``proto``
(B, 32, H/4, W/4) of an (H, W) network input::

    detections = postprocess(pred, proto, input_hw=(H, W), orig_hw=[(h0, w0), ...])

gives one :class:`~cocoseg.structures.Detections` per image, boxes and masks in *original image*
pixels. Evaluation defaults (conf 0.001, IoU 0.7, 300 detections, multi-label, class-aware) are
the keyword defaults; ``cocoseg predict`` uses conf 0.25 and one label per box.

Letterbox convention (spec 8.5, the same as ``cocoseg.data.letterbox``): gain
``r = min(H / h0, W / w0)`` (capped at 1 when not upscaling), resized size ``round(w0 r) x
round(h0 r)``, padding ``left = round(dw / 2 - 0.1)``, ``top = round(dh / 2 - 0.1)``. A
``ratio_pad`` is ``(r, (left, top))``.

Pure torch, no torchvision: NMS is a greedy loop over *kept* boxes (at most ``max_det``
iterations, each one vectorised over all remaining candidates).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cocoseg import structures
from cocoseg.structures import Detections, RawOutputs

from .anchors import decode_distances, make_anchors

__all__ = [
    "CLASS_OFFSET_PX",
    "box_iou",
    "decode_distributions",
    "decode_outputs",
    "distances_to_boxes",
    "letterbox_params",
    "make_anchors",
    "masks_to_original",
    "nms",
    "non_max_suppression",
    "postprocess",
    "process_masks",
    "scale_boxes_to_original",
]

CLASS_OFFSET_PX = 7680.0  # class-aware NMS shifts boxes by class * this, so classes never overlap
RatioPad = tuple[float, tuple[float, float]]


# ------------------------------------------------------------------------------------- decoding


def decode_distributions(logits: torch.Tensor, reg_max: int = 16) -> torch.Tensor:
    """DFL expectation: (..., 4 * reg_max) logits -> (..., 4) ltrb distances in grid units.

    The last dimension is side-major (``side * reg_max + bin``), sides left, top, right, bottom.
    """
    probs = logits.unflatten(-1, (4, reg_max)).softmax(-1)
    bins = torch.arange(reg_max, dtype=probs.dtype, device=probs.device)
    return probs @ bins


def distances_to_boxes(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """(..., 2) anchor points and (..., 4) ltrb distances -> (..., 4) xyxy boxes, same units."""
    return decode_distances(distances, points, xywh=False)


def decode_outputs(outputs: RawOutputs, *, num_classes: int, strides: Sequence[float] = (8, 16, 32),
                   reg_max: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-layout outputs -> the eval layout ``(pred (B, 4+nc+32, A), proto)``.

    ``pred`` rows: box (cx, cy, w, h) in input pixels, class probabilities, mask coefficients.
    """
    feats, coeffs, proto = outputs
    flat = torch.cat([f.flatten(2) for f in feats], 2)  # (B, 4*reg_max + nc, A)
    box_logits, cls_logits = flat.split((4 * reg_max, num_classes), 1)
    points, stride = make_anchors([f.shape[2:] for f in feats], strides, dtype=flat.dtype, device=flat.device)
    xyxy = distances_to_boxes(points, decode_distributions(box_logits.transpose(1, 2), reg_max)) * stride
    cxcywh = torch.cat(((xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]), -1)
    return torch.cat((cxcywh.transpose(1, 2), cls_logits.sigmoid(), coeffs), 1), proto


# ------------------------------------------------------------------------------------------ NMS


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (n, 4) and (m, 4) xyxy boxes -> (n, m)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(0)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(0).prod(-1)
    return inter / (area1[:, None] + area2[None, :] - inter).clamp(min=1e-12)


def nms(boxes_xyxy: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        max_keep: int | None = None) -> torch.Tensor:
    """Greedy NMS: indices (k,) of kept boxes by descending score, at most ``max_keep`` of them.

    A box is dropped when its IoU with an already kept, higher-scoring box exceeds the threshold.
    """
    order = scores.argsort(descending=True)
    boxes = boxes_xyxy[order]
    alive = torch.ones(order.shape[0], dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    limit = order.shape[0] if max_keep is None else min(max_keep, order.shape[0])
    start = 0
    while len(keep) < limit:
        remaining = alive[start:].nonzero()
        if remaining.numel() == 0:
            break
        i = start + int(remaining[0])
        keep.append(i)
        alive[i] = False
        start = i + 1
        # Only lower-scoring boxes (later in the order) can be suppressed by box i.
        alive[start:] &= box_iou(boxes[i:i + 1], boxes[start:])[0] <= iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


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


def letterbox_params(orig_hw: tuple[int, int], input_hw: tuple[int, int], scaleup: bool = True) -> RatioPad:
    """The ``(gain, (pad_left, pad_top))`` with which an ``orig_hw`` image was letterboxed to ``input_hw``."""
    params = structures.letterbox_params(orig_hw, input_hw, scaleup=scaleup)
    return params.gain, (float(params.pad_left), float(params.pad_top))


def scale_boxes_to_original(boxes_xyxy: torch.Tensor, orig_hw: tuple[int, int],
                            ratio_pad: RatioPad) -> torch.Tensor:
    """(n, 4) input-pixel boxes -> original-image pixels: remove padding, divide by gain, clip."""
    gain, (left, top) = ratio_pad
    pad = boxes_xyxy.new_tensor([left, top, left, top])
    out = (boxes_xyxy - pad) / gain
    out[:, 0::2] = out[:, 0::2].clamp(0, orig_hw[1])
    out[:, 1::2] = out[:, 1::2].clamp(0, orig_hw[0])
    return out


def masks_to_original(masks: torch.Tensor, orig_hw: tuple[int, int], ratio_pad: RatioPad) -> torch.Tensor:
    """(n, H, W) bool input-frame masks -> (n, h0, w0) bool: cut the padding, resize bilinearly.

    As with an 8-bit bilinear resize of a 0/1 map, a pixel is set when the interpolated value
    is at least 0.5.
    """
    gain, (left, top) = ratio_pad
    h0, w0 = orig_hw
    top_i, left_i = int(top), int(left)
    inner = masks[:, top_i:top_i + round(h0 * gain), left_i:left_i + round(w0 * gain)]
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
    """Instance masks from prototypes (spec 10.2).

    ``proto`` (32, h, w) of one image, ``coeffs`` (n, 32), ``boxes_xyxy`` (n, 4) in input pixels.
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


# ---------------------------------------------------------------------------------- all at once


def postprocess(pred: torch.Tensor, proto: torch.Tensor, *, input_hw: tuple[int, int] | None = None,
                orig_hw: Sequence[tuple[int, int]] | None = None,
                ratio_pads: Sequence[RatioPad] | None = None, conf: float = 0.001, iou: float = 0.7,
                max_det: int = 300, multi_label: bool = True, agnostic: bool = False,
                with_masks: bool = True, mask_chunk: int = 32) -> list[Detections]:
    """Eval-mode outputs -> one :class:`Detections` per image in original-image pixels.

    ``pred`` (B, 4 + nc + 32, A), ``proto`` (B, 32, H/4, W/4). ``input_hw`` defaults to
    4 x the proto size; ``orig_hw`` defaults to ``input_hw`` (no letterbox); ``ratio_pads``
    default to :func:`letterbox_params` of each original size. Masks (native path) are built
    ``mask_chunk`` detections at a time to bound memory.
    """
    input_hw = input_hw or (proto.shape[2] * 4, proto.shape[3] * 4)
    batch = pred.shape[0]
    orig_hw = list(orig_hw) if orig_hw is not None else [input_hw] * batch
    if ratio_pads is None:
        ratio_pads = [letterbox_params(s, input_hw) for s in orig_hw]
    rows_per_image = non_max_suppression(pred.detach(), num_masks=proto.shape[1], conf=conf, iou=iou,
                                         max_det=max_det, multi_label=multi_label, agnostic=agnostic)
    results = []
    for b, rows in enumerate(rows_per_image):
        boxes = scale_boxes_to_original(rows[:, :4], orig_hw[b], ratio_pads[b])
        masks = None
        if with_masks:
            parts = [masks_to_original(process_masks(proto[b].detach(), rows[i:i + mask_chunk, 6:],
                                                     rows[i:i + mask_chunk, :4], input_hw),
                                       orig_hw[b], ratio_pads[b])
                     for i in range(0, rows.shape[0], mask_chunk)]
            masks = (torch.cat(parts) if parts
                     else torch.zeros(0, *orig_hw[b], dtype=torch.bool, device=proto.device))
        results.append(Detections(boxes_xyxy=boxes.float(), scores=rows[:, 4].float(),
                                  classes=rows[:, 5].long(), masks=masks))
    return results
