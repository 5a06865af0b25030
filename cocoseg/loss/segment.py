"""The YOLOv8-seg training loss (spec 7): CIoU + DFL box loss, BCE class loss, prototype mask loss.

Usage::

    criterion = SegmentationLoss.from_model(model)      # or SegmentationLoss(num_classes=80)
    losses = criterion(raw_outputs, targets)            # RawOutputs, SegTargets
    losses["loss"].backward()

The whole batch is processed at once: targets are padded to (B, M, ...) tensors and the assigner
works on (B, M, A). The class and mask terms are hand-written autograd functions
(:mod:`cocoseg.loss.fused`): the class target is sparse, and the mask term is computed per
ground-truth box inside its crop of the prototype grid, for all of that box's positives at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cocoseg.structures import RawOutputs, SegTargets

from .assigner import Assignment, TaskAlignedAssigner
from .boxes import bbox_ciou, boxes_to_distances, decode_distributions, distances_to_boxes, make_anchors
from .fused import MaskGroup, cropped_mask_bce, sparse_target_bce

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
        self._anchor_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

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
        points, stride = self._anchors(sizes, pred_dist.dtype, proto.device)
        image_hw = (sizes[0][0] * int(self.strides[0]), sizes[0][1] * int(self.strides[0]))

        gt_labels, gt_boxes, gt_valid, slot = pad_targets(targets, batch, image_hw)
        # The assigner sees detached predictions of every anchor: decoded without a graph here, and
        # again with one for the positives only (the box terms), which is all the backward needs.
        with torch.no_grad():
            probs = pred_logits.sigmoid()
            boxes_px = distances_to_boxes(points, decode_distributions(pred_dist, reg_max)) * stride
        assigned = self.assigner(probs, boxes_px.float(), points * stride,
                                 gt_labels, gt_boxes, gt_valid, dense_scores=False)
        fg_b, fg_a = assigned.fg_mask.nonzero(as_tuple=True)  # (P,), (P,) in image, anchor order
        weight = assigned.weight[fg_b, fg_a]  # (P,) soft score of each positive
        score_sum = weight.sum().clamp(min=1.0)

        index = (fg_b, fg_a, assigned.labels[fg_b, fg_a])
        loss_cls = sparse_target_bce(pred_logits, probs, index, weight.to(pred_logits.dtype)) / score_sum
        loss_box, loss_dfl = self._box_losses(pred_dist, points, stride, assigned,
                                              (fg_b, fg_a, weight), score_sum)
        loss_mask = self._mask_loss(coeffs, proto, targets.masks, assigned, (fg_b, fg_a), image_hw)

        g = self.gains
        terms = {"loss_box": g.box * loss_box, "loss_mask": g.mask * loss_mask,
                 "loss_cls": g.cls * loss_cls, "loss_dfl": g.dfl * loss_dfl}
        total = batch * sum(terms.values())
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    def _box_losses(self, pred_dist: torch.Tensor, points: torch.Tensor,
                    stride: torch.Tensor, assigned: Assignment,
                    positives: tuple[torch.Tensor, torch.Tensor, torch.Tensor], score_sum: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CIoU and DFL terms over the positive anchors ``(image, anchor, weight)``, in grid units (spec 7.4)."""
        fg_b, fg_a, weight = positives
        if fg_b.numel() == 0:
            zero = pred_dist.sum() * 0.0 + 0.0  # keeps the graph; + 0.0 turns -0.0 into 0.0
            return zero, zero
        target_boxes = assigned.boxes_xyxy[fg_b, fg_a] / stride[fg_a]  # (P, 4) grid units
        logits = pred_dist[fg_b, fg_a]  # (P, 4 * reg_max)
        pred_boxes = distances_to_boxes(points[fg_a], decode_distributions(logits, self.reg_max))
        iou = bbox_ciou(pred_boxes, target_boxes)
        loss_box = ((1.0 - iou) * weight).sum() / score_sum

        target_dist = boxes_to_distances(points[fg_a], target_boxes, self.reg_max - 1 - 0.01)  # (P, 4)
        logits = logits.reshape(-1, self.reg_max)  # (P*4, reg_max)
        tau = target_dist.reshape(-1)
        left = tau.long()
        w_left = (left + 1).to(tau.dtype) - tau
        ce_left = F.cross_entropy(logits, left, reduction="none")
        ce_right = F.cross_entropy(logits, left + 1, reduction="none")
        dfl = (ce_left * w_left + ce_right * (1.0 - w_left)).view(-1, 4).mean(-1)
        loss_dfl = (dfl * weight).sum() / score_sum
        return loss_box, loss_dfl

    def _anchors(self, sizes: list[tuple[int, int]], dtype: torch.dtype, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``make_anchors`` for these level sizes, built once per (sizes, dtype, device) and kept."""
        key = (tuple(sizes), dtype, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = make_anchors(sizes, list(self.strides), dtype=dtype, device=device)
        return self._anchor_cache[key]

    def _mask_loss(self, coeffs: torch.Tensor, proto: torch.Tensor, gt_maps: torch.Tensor,
                   assigned: Assignment, positives: tuple[torch.Tensor, torch.Tensor],
                   image_hw: tuple[int, int]) -> torch.Tensor:
        """Prototype mask loss over every positive anchor of the batch (spec 7.4, "seg").

        Per positive: BCE of ``coeffs_a @ proto_b`` against the assigned instance's mask, kept
        inside the assigned gt box (maps f times finer than the grid give each cell the fraction
        of its f x f pixels that the instance covers, ``train.mask_ratio`` 1; maps at the grid's
        size, whether its centre is inside: spec 7.4 exactly), averaged over the proto grid and divided by the box's
        normalised area; summed over positives and divided by their number. Only the box's crop
        is ever computed (the rest of the grid contributes exactly zero).
        """
        fg_b, fg_a = positives
        if fg_b.numel() == 0:
            return proto.sum() * 0.0 + coeffs.sum() * 0.0 + 0.0
        _, _, mh, mw = proto.shape
        gh, gw = gt_maps.shape[-2:]
        factor = gh // mh
        if factor < 1 or (gh, gw) != (factor * mh, factor * mw):  # not a whole multiple: nearest, as YOLOv8
            gt_maps, factor = F.interpolate(gt_maps[:, None].float(), (mh, mw), mode="nearest")[:, 0], 1
        groups = _mask_groups(fg_b, fg_a, assigned, image_hw, (mh, mw))
        return cropped_mask_bce(coeffs, proto, gt_maps, groups, factor) / fg_b.shape[0]


def _mask_groups(fg_b: torch.Tensor, fg_a: torch.Tensor, assigned: Assignment, image_hw: tuple[int, int],
                 grid_hw: tuple[int, int]) -> list[MaskGroup]:
    """Positives grouped by their (image, gt box), with each box's crop of the ``grid_hw`` grid.

    A pixel with integer column c, row r is kept iff x1 <= c < x2 and y1 <= r < y2 (spec 7.4), i.e.
    columns ``ceil(x1) .. ceil(x2) - 1``; boxes whose crop holds no pixel centre are dropped (they
    add exactly zero). One host transfer for the whole batch.
    """
    (h, w), (mh, mw) = image_hw, grid_hw
    gt = assigned.gt_index[fg_b, fg_a]
    key = fg_b * (int(gt.max()) + 1) + gt
    key, order = key.sort(stable=True)
    anchors_sorted = fg_a[order]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    starts = first.nonzero().view(-1)
    lead = order[starts]  # one positive per group, to read its box
    norm = torch.tensor([w, h, w, h], dtype=torch.float32, device=gt.device)
    grid = torch.tensor([mw, mh, mw, mh], dtype=torch.float32, device=gt.device)
    boxes_norm = assigned.boxes_xyxy[fg_b[lead], fg_a[lead]].float() / norm
    bounds = (boxes_norm * grid).ceil().clamp_(min=0)
    bounds = torch.minimum(bounds, grid).long()
    area = (boxes_norm[:, 2] - boxes_norm[:, 0]) * (boxes_norm[:, 3] - boxes_norm[:, 1])
    scale = 1.0 / (mh * mw * area)
    counts = torch.diff(starts, append=starts.new_tensor([key.shape[0]]))
    rows = torch.stack([fg_b[lead], gt[lead], bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3]], 1)
    groups = []
    for (b, slot, x1, y1, x2, y2), s, k, anchors in zip(rows.tolist(), scale.tolist(), counts.tolist(),
                                                       anchors_sorted.split(counts.tolist()), strict=True):
        if x2 > x1 and y2 > y1 and k:
            groups.append(MaskGroup(b, slot, anchors, y1, y2, x1, x2, s))
    return groups


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
        problems.append(f"masks must be (B={batch}, H/r, W/r) overlap maps, got {tuple(targets.masks.shape)}")
    if problems:
        raise ValueError("SegTargets do not fit the model outputs: " + "; ".join(problems))
