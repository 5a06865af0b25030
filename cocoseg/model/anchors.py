"""Anchor points and box decoding shared by the head, the loss and post-processing (spec 5.2).

Anchor order everywhere: level P3, then P4, then P5; inside a level row-major (y outer, x
inner), which is what ``feature.view(B, C, -1)`` of each map followed by a concatenation
over levels gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["decode_distances", "decode_distributions", "distances_to_boxes", "make_anchors"]


def make_anchors(feats: Sequence[torch.Tensor | tuple[int, int]], strides: Sequence[float] | torch.Tensor,
                 offset: float = 0.5, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres and their strides for a list of feature maps.

    Args:
        feats: per level either a feature map (B, C, H_i, W_i) or its ``(H_i, W_i)`` size.
        strides: per level stride in input pixels, e.g. ``[8, 16, 32]``.
        offset: cell-centre offset; 0.5 puts the anchor in the middle of the cell.
        device, dtype: of the result; by default those of the first feature map (CPU/float32
            when sizes are given).

    Returns:
        ``anchor_points`` (A, 2) float: (x, y) in *grid units of their own level* (e.g. 0.5,
        1.5, ...), and ``stride_tensor`` (A, 1) float: each anchor's stride. Multiply the two
        for input pixels.
    """
    if len(feats) != len(strides):
        raise ValueError(f"make_anchors: {len(feats)} feature levels but {len(strides)} strides")
    first = feats[0]
    if isinstance(first, torch.Tensor):
        device = device if device is not None else first.device
        dtype = first.dtype if first.is_floating_point() else dtype
    points, stride_list = [], []
    for level, stride in zip(feats, strides, strict=True):
        height, width = (level.shape[-2], level.shape[-1]) if isinstance(level, torch.Tensor) else level
        xs = torch.arange(width, device=device, dtype=dtype) + offset
        ys = torch.arange(height, device=device, dtype=dtype) + offset
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each, y outer
        points.append(torch.stack((grid_x, grid_y), dim=-1).view(-1, 2))
        stride_list.append(torch.full((height * width, 1), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_list)


def decode_distances(distances: torch.Tensor, anchor_points: torch.Tensor, *, xywh: bool,
                     dim: int = -1) -> torch.Tensor:
    """Distances (left, top, right, bottom) from anchor points -> boxes, same units as inputs.

    ``distances`` holds the four sides along ``dim`` (e.g. (B, A, 4) with ``dim=-1`` or
    (B, 4, A) with ``dim=1``); ``anchor_points`` broadcasts against one half of it (e.g. (A, 2)
    or (2, A)). Returns boxes in the same layout as (cx, cy, w, h) when ``xywh`` else
    (x1, y1, x2, y2).
    """
    left_top, right_bottom = distances.chunk(2, dim)
    top_left_xy = anchor_points - left_top
    bottom_right_xy = anchor_points + right_bottom
    if xywh:
        return torch.cat(((top_left_xy + bottom_right_xy) / 2, bottom_right_xy - top_left_xy), dim)
    return torch.cat((top_left_xy, bottom_right_xy), dim)


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
