"""The YOLOv8-seg training loss (spec 7): CIoU + DFL box loss, BCE class loss, prototype mask loss.

Usage::

    criterion = SegmentationLoss.from_model(model)      # or SegmentationLoss(num_classes=80)
    losses = criterion(raw_outputs, targets)            # RawOutputs, SegTargets
    losses["loss"].backward()

The whole batch is processed at once: targets are padded to (B, M, ...) tensors, the assigner
works on (B, M, A), and the mask loss is computed for all positive anchors of all images together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cocoseg.structures import RawOutputs, SegTargets

from .assigner import Assignment, TaskAlignedAssigner
from .boxes import bbox_ciou, boxes_to_distances, decode_distributions, distances_to_boxes, make_anchors

__all__ = ["LossGains", "SegmentationLoss", "pad_targets"]


@dataclass(frozen=True)
class LossGains:
    """Gains of the four terms (spec 7.5). The mask term uses the box gain in YOLOv8."""

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    mask: float = 7.5


def pad_targets(targets: SegTargets, batch_size: int, image_hw: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the N instance rows by image into zero-padded per-image tensors (spec 7.1).

    Returns ``labels`` (B, M) int64, ``boxes_xyxy`` (B, M, 4) in input pixels, ``valid`` (B, M)
    bool and ``slot`` (N,) int64, the row's position within its image (0-based, in row order,
    which is also the overlap-map value minus 1). M = largest instance count of any image.
    """
    n = targets.num_instances
    dev = targets.boxes_cxcywh_norm.device
    batch_idx = targets.batch_idx.long()
    # Position of each row among the rows of its image, without a loop: cumulative count per image.
    onehot = (F.one_hot(batch_idx, batch_size) if n
              else torch.zeros(0, batch_size, dtype=torch.long, device=dev))
    slot = ((onehot.cumsum(0) - 1) * onehot).sum(1)
    max_inst = int(onehot.sum(0).max()) if n else 0
    h, w = image_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=dev)
    cxcywh = targets.boxes_cxcywh_norm.float() * scale
    xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)
    labels = torch.zeros(batch_size, max_inst, dtype=torch.long, device=dev)
    boxes = torch.zeros(batch_size, max_inst, 4, dtype=torch.float32, device=dev)
    valid = torch.zeros(batch_size, max_inst, dtype=torch.bool, device=dev)
    labels[batch_idx, slot] = targets.cls.long().view(-1)  # (N,) or (N, 1) both accepted
    boxes[batch_idx, slot] = xyxy
    valid[batch_idx, slot] = True
    return labels, boxes, valid, slot


class SegmentationLoss:
    """YOLOv8-seg loss. ``__call__(outputs: RawOutputs, targets: SegTargets) -> dict``.

    The dict holds ``loss`` (the scalar to back-propagate: ``B * (box + mask + cls + dfl)``, spec 7.5)
    and the four gained terms ``loss_box``, ``loss_mask``, ``loss_cls``, ``loss_dfl`` (detached,
    for logging, before the ``* B``). Keyword arguments are the head's hyper-parameters.
    """

    def __init__(self, *, num_classes: int = 80, strides: tuple[float, ...] = (8.0, 16.0, 32.0),
                 reg_max: int = 16, gains: LossGains = LossGains(), topk: int = 10, alpha: float = 0.5,
                 beta: float = 6.0) -> None:
        self.num_classes = num_classes
        self.strides = tuple(float(s) for s in strides)
        self.reg_max = reg_max
        self.gains = gains
        self.assigner = TaskAlignedAssigner(num_classes=num_classes, topk=topk, alpha=alpha, beta=beta)

    @classmethod
    def from_model(cls, model: torch.nn.Module, **kwargs) -> SegmentationLoss:
        """Read ``num_classes``, ``strides`` and ``reg_max`` from a model that exposes them."""
        found = {}
        for name in ("num_classes", "strides", "reg_max"):
            value = getattr(model, name, None)
            if value is None:
                value = getattr(getattr(model, "head", None), name, None)
            if value is not None:
                found[name] = tuple(float(s) for s in value) if name == "strides" else int(value)
        return cls(**{**found, **kwargs})

    def __call__(self, outputs: RawOutputs, targets: SegTargets) -> dict[str, torch.Tensor]:
        # The loss runs in float32 even when the forward ran under autocast (bf16 targets and
        # normalisers would lose the small soft scores).
        feats = [f.float() for f in outputs.feats]
        coeffs, proto = outputs.mask_coeffs.float(), outputs.proto.float()
        batch = proto.shape[0]
        nc, reg_max = self.num_classes, self.reg_max
        _check_targets(targets, batch)
        # (B, 4*reg_max + nc, A) -> box logits (B, A, 4*reg_max) and class logits (B, A, nc).
        flat = torch.cat([f.flatten(2) for f in feats], 2)
        if flat.shape[1] != 4 * reg_max + nc:
            raise ValueError(f"feature maps have {flat.shape[1]} channels, expected 4*{reg_max}+{nc}")
        pred_dist, pred_logits = flat.transpose(1, 2).split((4 * reg_max, nc), 2)
        sizes = [(f.shape[2], f.shape[3]) for f in feats]
        points, stride = make_anchors(sizes, list(self.strides), dtype=pred_dist.dtype, device=proto.device)
        image_hw = (sizes[0][0] * int(self.strides[0]), sizes[0][1] * int(self.strides[0]))

        gt_labels, gt_boxes, gt_valid, slot = pad_targets(targets, batch, image_hw)
        pred_boxes = distances_to_boxes(points, decode_distributions(pred_dist, reg_max))  # grid units
        assigned = self.assigner(pred_logits.detach().sigmoid(), (pred_boxes.detach() * stride).float(),
                                 points * stride, gt_labels, gt_boxes, gt_valid)
        score_sum = assigned.scores.sum().clamp(min=1.0)

        loss_cls = F.binary_cross_entropy_with_logits(pred_logits, assigned.scores.to(pred_logits.dtype),
                                                      reduction="sum") / score_sum
        loss_box, loss_dfl = self._box_losses(pred_dist, pred_boxes, points, stride, assigned, score_sum)
        loss_mask = self._mask_loss(coeffs, proto, targets.masks, assigned, image_hw)

        g = self.gains
        terms = {"loss_box": g.box * loss_box, "loss_mask": g.mask * loss_mask,
                 "loss_cls": g.cls * loss_cls, "loss_dfl": g.dfl * loss_dfl}
        total = batch * sum(terms.values())
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    def _box_losses(self, pred_dist: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                    stride: torch.Tensor, assigned: Assignment, score_sum: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CIoU and DFL terms over the positive anchors, both in grid units (spec 7.4)."""
        fg = assigned.fg_mask
        if not bool(fg.any()):
            zero = pred_dist.sum() * 0.0 + 0.0  # keeps the graph; + 0.0 turns -0.0 into 0.0
            return zero, zero
        weight = assigned.scores.sum(-1)[fg]  # (P,)
        target_boxes = (assigned.boxes_xyxy / stride)[fg]  # (P, 4) grid units
        iou = bbox_ciou(pred_boxes[fg], target_boxes)
        loss_box = ((1.0 - iou) * weight).sum() / score_sum

        anchor_points = points.expand(fg.shape[0], -1, -1)[fg]
        target_dist = boxes_to_distances(anchor_points, target_boxes, self.reg_max - 1 - 0.01)  # (P, 4)
        logits = pred_dist[fg].view(-1, self.reg_max)  # (P*4, reg_max)
        tau = target_dist.reshape(-1)
        left = tau.long()
        w_left = (left + 1).to(tau.dtype) - tau
        ce_left = F.cross_entropy(logits, left, reduction="none")
        ce_right = F.cross_entropy(logits, left + 1, reduction="none")
        dfl = (ce_left * w_left + ce_right * (1.0 - w_left)).view(-1, 4).mean(-1)
        loss_dfl = (dfl * weight).sum() / score_sum
        return loss_box, loss_dfl

    def _mask_loss(self, coeffs: torch.Tensor, proto: torch.Tensor, gt_maps: torch.Tensor,
                   assigned: Assignment, image_hw: tuple[int, int]) -> torch.Tensor:
        """Prototype mask loss over every positive anchor of the batch (spec 7.4, "seg").

        Per positive: BCE of ``coeffs_a @ proto_b`` against the assigned instance's mask, kept
        inside the assigned gt box, averaged over the proto grid and divided by the box's
        normalised area; summed over positives and divided by their number.
        """
        fg = assigned.fg_mask
        if not bool(fg.any()):
            return proto.sum() * 0.0 + coeffs.sum() * 0.0 + 0.0
        _, _, mh, mw = proto.shape
        if gt_maps.shape[-2:] != (mh, mw):  # only when mask_ratio != 4: nearest, as classic YOLOv8
            gt_maps = F.interpolate(gt_maps[:, None].float(), (mh, mw), mode="nearest")[:, 0]
        img_idx, anchor_idx = fg.nonzero(as_tuple=True)  # (P,), (P,)
        gt_mask = (gt_maps[img_idx] == (assigned.gt_index[img_idx, anchor_idx] + 1)[:, None, None])
        # One batched matmul over images: positives are packed per image into (B, P_max, 32) rows
        # (zero-padded), multiplied with that image's (32, mh*mw) prototypes, then unpacked.
        slot = (fg.cumsum(1) - 1)[img_idx, anchor_idx]  # (P,) position among the image's positives
        packed = coeffs.new_zeros(fg.shape[0], int(slot.max()) + 1, coeffs.shape[1])
        packed[img_idx, slot] = coeffs.transpose(1, 2)[img_idx, anchor_idx]
        logits = torch.bmm(packed, proto.flatten(2))[img_idx, slot].view(-1, mh, mw)  # (P, mh, mw)
        bce = F.binary_cross_entropy_with_logits(logits, gt_mask.to(logits.dtype), reduction="none")

        boxes_norm = assigned.boxes_xyxy[img_idx, anchor_idx] / torch.tensor(
            [image_hw[1], image_hw[0], image_hw[1], image_hw[0]], dtype=torch.float32, device=proto.device)
        boxes_grid = boxes_norm * torch.tensor([mw, mh, mw, mh], dtype=torch.float32, device=proto.device)
        inside = _box_crop_mask(boxes_grid, mh, mw)  # (P, mh, mw)
        area = (boxes_norm[:, 2] - boxes_norm[:, 0]) * (boxes_norm[:, 3] - boxes_norm[:, 1])
        per_positive = (bce * inside).mean((1, 2)) / area
        return per_positive.sum() / img_idx.shape[0]


def _check_targets(targets: SegTargets, batch: int) -> None:
    """Shape and range checks that turn a malformed batch into one clear message."""
    n = targets.num_instances
    problems = []
    if targets.batch_idx.shape != (n,) or targets.boxes_cxcywh_norm.shape != (n, 4):
        problems.append(f"batch_idx {tuple(targets.batch_idx.shape)}, cls {tuple(targets.cls.shape)} and "
                        f"boxes {tuple(targets.boxes_cxcywh_norm.shape)} must be (N,), (N,) and (N, 4)")
    elif n and (int(targets.batch_idx.min()) < 0 or int(targets.batch_idx.max()) >= batch):
        problems.append(f"batch_idx must lie in 0..{batch - 1}, got {int(targets.batch_idx.max())}")
    if targets.masks.dim() != 3 or targets.masks.shape[0] != batch:
        problems.append(f"masks must be (B={batch}, H/4, W/4) overlap maps, got {tuple(targets.masks.shape)}")
    if problems:
        raise ValueError("SegTargets do not fit the model outputs: " + "; ".join(problems))


def _box_crop_mask(boxes_xyxy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(P, 4) boxes in grid cells -> (P, H, W) bool: column c, row r kept iff x1 <= c < x2, y1 <= r < y2."""
    cols = torch.arange(width, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype)[None, None, :]
    rows = torch.arange(height, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype)[None, :, None]
    x1, y1, x2, y2 = (boxes_xyxy[:, i, None, None] for i in range(4))
    return (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
