"""Hand-written autograd functions for the two big terms of the loss (spec 7.4 "cls" and "seg").

Both are sums of BCE-with-logits, written as ``softplus(x) - x * t`` with gradient
``(sigmoid(x) - t)``, the same formula autograd uses for ``binary_cross_entropy_with_logits``:

- :func:`sparse_target_bce` for the class term: the target is one-hot times a weight on the
  positive anchors only, so the ``x * t`` part and the ``- t`` of the gradient touch P entries
  instead of B * A * nc, and the sigmoid the assigner needed anyway is reused for the gradient.
- :func:`cropped_mask_bce` for the mask term: each ground-truth box's loss is computed inside its
  crop of the prototype grid only, for all positives assigned to that box at once; nothing of
  size ``positives x H x W`` is allocated (the dense version needed ~0.5 GB at 480 positives on a
  160 x 160 grid), and the gradients are written straight into one buffer per input instead of
  one full-size zero tensor per crop (what autograd's slicing backward would allocate).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["MaskGroup", "cropped_mask_bce", "sparse_target_bce"]


class _SparseTargetBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, probs, index, target):  # noqa: ANN001, ANN205 (autograd signature)
        with torch.autocast(logits.device.type, enabled=False):  # float32 also under autocast
            return _SparseTargetBCE._forward(ctx, logits, probs, index, target)

    @staticmethod
    def _forward(ctx, logits, probs, index, target):  # noqa: ANN001, ANN205
        picked = logits[index]
        ctx.save_for_backward(probs, target)
        ctx.index, ctx.shape, ctx.dtype = index, logits.shape, logits.dtype
        return F.softplus(logits).sum() - (picked * target).sum()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        probs, target = ctx.saved_tensors
        out = (probs * grad).to(ctx.dtype)  # a new tensor: the caller's probabilities stay intact
        out.index_put_(ctx.index, -(target * grad).to(ctx.dtype), accumulate=True)
        return out, None, None, None


def sparse_target_bce(logits: torch.Tensor, probs: torch.Tensor, index: tuple[torch.Tensor, ...],
                      target: torch.Tensor) -> torch.Tensor:
    """Summed BCE-with-logits of ``logits`` against a target that is zero except ``target`` at
    ``index`` (advanced-index tuple, one entry per dim, no repeats). ``probs`` is
    ``sigmoid(logits)`` already computed (detached), reused for the gradient. Returns a scalar."""
    return _SparseTargetBCE.apply(logits, probs.detach(), index, target.detach())


class MaskGroup(NamedTuple):
    """All positives of one ground-truth box: image ``b``, gt row ``slot`` (overlap-map value
    ``slot + 1``), their anchor indices, the crop rows ``y1:y2`` and columns ``x1:x2`` of the
    prototype grid, and ``scale`` = 1 / (grid pixels * normalised box area)."""

    b: int
    slot: int
    anchors: torch.Tensor
    y1: int
    y2: int
    x1: int
    x2: int
    scale: float


class _CroppedMaskBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeffs, proto, gt_maps, groups, factor):  # noqa: ANN001, ANN205
        # The loss is float32 even when the forward ran under autocast; the saved crops are then
        # float32 too, which the backward (run outside autocast) relies on.
        with torch.autocast(coeffs.device.type, enabled=False):
            return _CroppedMaskBCE._forward(ctx, coeffs, proto, gt_maps, groups, factor)

    @staticmethod
    def _forward(ctx, coeffs, proto, gt_maps, groups, factor):  # noqa: ANN001, ANN205
        total = coeffs.new_zeros(())
        saved = []
        for g in groups:
            crop = proto[g.b, :, g.y1:g.y2, g.x1:g.x2].reshape(proto.shape[1], -1)  # (nm, h*w)
            coef = coeffs[g.b, :, g.anchors]  # (nm, K)
            logits = coef.T @ crop  # (K, h*w)
            inside = gt_maps[g.b, g.y1 * factor:g.y2 * factor, g.x1 * factor:g.x2 * factor] == g.slot + 1
            if factor > 1:  # the covered fraction of each cell's factor x factor pixels
                inside = inside.reshape(g.y2 - g.y1, factor, g.x2 - g.x1, factor).to(logits.dtype).mean((1, 3))
            target = inside.reshape(1, -1).to(logits.dtype)
            bce = F.softplus(logits).sum() - (logits.sum(0) * target[0]).sum()
            total = total + bce * g.scale
            saved.append((crop, coef, (torch.sigmoid_(logits) - target) * g.scale))
        ctx.saved, ctx.groups = saved, groups
        ctx.coeffs_shape, ctx.proto_shape = coeffs.shape, proto.shape
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_coeffs = grad.new_zeros(ctx.coeffs_shape)
        grad_proto = grad.new_zeros(ctx.proto_shape)
        for g, (crop, coef, dlogits) in zip(ctx.groups, ctx.saved, strict=True):
            dlogits = dlogits * grad
            grad_coeffs[g.b, :, g.anchors] = crop @ dlogits.T  # (nm, K); anchors of one gt are distinct
            grad_proto[g.b, :, g.y1:g.y2, g.x1:g.x2] += (coef @ dlogits).view(-1, g.y2 - g.y1, g.x2 - g.x1)
        return grad_coeffs, grad_proto, None, None, None


def cropped_mask_bce(coeffs: torch.Tensor, proto: torch.Tensor, gt_maps: torch.Tensor,
                     groups: list[MaskGroup], factor: int = 1) -> torch.Tensor:
    """``sum_groups scale * sum_{positives, crop pixels} BCE(coeffs_a @ proto_b, target)``.

    ``coeffs`` (B, nm, A), ``proto`` (B, nm, H, W), ``gt_maps`` (B, factor H, factor W) integer
    overlap maps. The target of a grid cell is ``gt == slot + 1`` when ``factor`` is 1, else the
    fraction of the cell's ``factor x factor`` map pixels that equal ``slot + 1`` (a soft target).
    Returns a scalar (the caller divides by the number of positives)."""
    return _CroppedMaskBCE.apply(coeffs, proto, gt_maps, groups, int(factor))
