"""Task-aligned assigner (TOOD), as YOLOv8 uses it (spec 7.3): topk 10, alpha 0.5, beta 6.

Everything is computed for the whole batch at once on (B, M, A) tensors: B images, M the
largest number of ground-truth boxes in any image (rows beyond an image's own count are padding),
A anchor points. CIoU and the alignment are only evaluated on the (gt, anchor) pairs whose anchor
lies inside the box, which are few compared with B * M * A. Reductions over the short M axis
(argmax, sums) are strided and slow on the CPU, so they are done only where they matter: the
multiply-claimed anchors for the overlap argmax, and an index-weighted sum for the assigned row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .boxes import bbox_ciou

__all__ = ["Assignment", "TaskAlignedAssigner"]


class Assignment(NamedTuple):
    """Per-anchor targets, all (B, A, ...):

    - ``labels`` (B, A) int64, class of the assigned box (0 for background anchors);
    - ``boxes_xyxy`` (B, A, 4) float, assigned box in input pixels (that of gt 0 for background);
    - ``scores`` (B, A, nc) float, one-hot class times the normalised alignment (0 for background);
      None when the assigner was called with ``dense_scores=False`` (the loss needs only ``weight``);
    - ``fg_mask`` (B, A) bool, anchor has a positive;
    - ``gt_index`` (B, A) int64, row of the assigned box in the padded gt tensor (0 for background);
    - ``weight`` (B, A) float, the normalised alignment, i.e. ``scores.sum(-1)`` (0 for background).
    """

    labels: torch.Tensor
    boxes_xyxy: torch.Tensor
    scores: torch.Tensor | None
    fg_mask: torch.Tensor
    gt_index: torch.Tensor
    weight: torch.Tensor


class TaskAlignedAssigner:
    """Assign ground-truth boxes to anchors by ``score**alpha * CIoU**beta`` (spec 7.3).

    Call with detached predictions: ``pred_scores`` (B, A, nc) probabilities, ``pred_boxes_xyxy``
    (B, A, 4) input pixels, ``anchor_points`` (A, 2) input pixels, ``gt_labels`` (B, M) int64,
    ``gt_boxes_xyxy`` (B, M, 4) input pixels, ``gt_valid`` (B, M) bool. Returns :class:`Assignment`.
    """

    def __init__(self, *, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        self.num_classes = num_classes
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes_xyxy: torch.Tensor,
                 anchor_points: torch.Tensor, gt_labels: torch.Tensor, gt_boxes_xyxy: torch.Tensor,
                 gt_valid: torch.Tensor, *, dense_scores: bool = True) -> Assignment:
        num_gt = gt_boxes_xyxy.shape[1]
        if num_gt == 0:
            return self._background(pred_scores, pred_boxes_xyxy, dense_scores)

        candidate = self._anchors_inside(anchor_points, gt_boxes_xyxy) & gt_valid[..., None]
        align, overlaps = self._alignment(pred_scores, pred_boxes_xyxy, gt_labels, gt_boxes_xyxy, candidate)
        positive = self._topk_mask(align) & candidate  # (B, M, A)
        positive = self._resolve_claims(positive, overlaps)

        fg_mask = positive.any(1)  # (B, A)
        # At most one positive row per anchor now: its index is the index-weighted sum (0 if none).
        rows = torch.arange(num_gt, device=positive.device).view(1, -1, 1)
        gt_index = (positive * rows).sum(1)  # (B, A) int64
        labels = gt_labels.gather(1, gt_index)
        boxes = gt_boxes_xyxy.gather(1, gt_index[..., None].expand(-1, -1, 4))

        # Soft class target: alignment rescaled so each box's best anchor gets that box's best IoU.
        align = align * positive
        best_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        best_overlap = (overlaps * positive).amax(-1, keepdim=True)
        weight = (align * best_overlap / (best_align + self.eps)).amax(1) * fg_mask  # (B, A)
        scores = self._dense(labels, weight) if dense_scores else None
        return Assignment(labels, boxes, scores, fg_mask, gt_index, weight.to(pred_scores.dtype))

    def _dense(self, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, A) labels and weights -> (B, A, nc) one-hot scores times weight."""
        scores = torch.zeros(*labels.shape, self.num_classes, dtype=weight.dtype, device=weight.device)
        return scores.scatter_(2, labels[..., None], weight[..., None])

    def _background(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, dense: bool) -> Assignment:
        batch, num_anchors, _ = pred_scores.shape
        dev = pred_scores.device
        zeros_long = torch.zeros(batch, num_anchors, dtype=torch.long, device=dev)
        return Assignment(zeros_long, torch.zeros_like(pred_boxes), torch.zeros_like(pred_scores) if dense else None,
                          torch.zeros(batch, num_anchors, dtype=torch.bool, device=dev), zeros_long.clone(),
                          torch.zeros(batch, num_anchors, dtype=pred_scores.dtype, device=dev))

    @staticmethod
    def _anchors_inside(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
        """(A, 2) points, (B, M, 4) boxes -> (B, M, A) bool: point strictly inside the box."""
        x, y = points[:, 0], points[:, 1]
        x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
        margin = torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y))
        return margin > eps

    def _alignment(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, gt_labels: torch.Tensor,
                   gt_boxes: torch.Tensor, candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, A) alignment ``s**alpha * u**beta`` and overlap ``u``, zero off the candidates."""
        b_idx, m_idx, a_idx = candidate.nonzero(as_tuple=True)
        # Probability of each candidate's gt class at its anchor, read straight from (B, A, nc).
        class_prob = pred_scores[b_idx, a_idx, gt_labels[b_idx, m_idx]]
        ciou = bbox_ciou(gt_boxes[b_idx, m_idx], pred_boxes[b_idx, a_idx]).clamp_(0)
        overlaps = torch.zeros(candidate.shape, dtype=pred_boxes.dtype, device=pred_boxes.device)
        align = torch.zeros(candidate.shape, dtype=pred_boxes.dtype, device=pred_boxes.device)
        overlaps[b_idx, m_idx, a_idx] = ciou
        align[b_idx, m_idx, a_idx] = class_prob.to(ciou.dtype).pow(self.alpha) * ciou.pow(self.beta)
        return align, overlaps

    def _topk_mask(self, align: torch.Tensor) -> torch.Tensor:
        """(B, M, A) -> bool mask of each row's ``topk`` largest entries."""
        k = min(self.topk, align.shape[-1])
        idx = align.topk(k, dim=-1, largest=True).indices
        return torch.zeros_like(align, dtype=torch.bool).scatter_(-1, idx, True)

    @staticmethod
    def _resolve_claims(positive: torch.Tensor, overlaps: torch.Tensor) -> torch.Tensor:
        """An anchor claimed by several boxes keeps the one it overlaps most (first on ties, over all M)."""
        claimed_b, claimed_a = (positive.sum(1) > 1).nonzero(as_tuple=True)
        if claimed_b.numel() == 0:
            return positive
        best = overlaps[claimed_b, :, claimed_a].argmax(-1)  # (C,)
        positive[claimed_b, :, claimed_a] = False
        positive[claimed_b, best, claimed_a] = True
        return positive
