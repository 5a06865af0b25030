"""Snapshot rows -> :class:`Sample` (image + instance polygons) and samples -> model-ready rows.

A :class:`Sample` holds one image and its instances, transformed together by
:mod:`cocoseg.data.augment`. Each instance is one polygon resampled to a fixed number of points
(spec 8.1), so all instances of a sample stack into one ``(n, K, 2)`` array and every geometric
transform is a single vectorised matrix product. Multi-part COCO polygons are merged into one ring
joined by zero-width bridges (each bridge is walked there and back), which rasterises to the same
pixels as the separate parts.

Crowd regions (``iscrowd``) and annotations without a polygon are not training targets (spec 8.2)
and are dropped here; a snapshot keeps them for evaluation.

Output row format (:func:`format_sample`), the contract with :mod:`cocoseg.data.collate`:

- ``image``: (S_h, S_w, 3) uint8 RGB, HWC as augmented (no transpose copy here: collation
  permutes the batch to (B, 3, H, W) as a zero-copy channels_last view);
- ``masks``: (S_h/r, S_w/r) overlap map (spec 8.6; r = ``train.mask_ratio``, 4 by default): value
  k >= 1 is the k-th row of ``labels``; uint8 up to 255 instances;
- ``labels``: (n, 5) float32 rows ``[class, cx, cy, w, h]`` with the box normalised to 0..1;
- ``image_id``: int64; ``orig_hw``: (2,) int32; ``letterbox``: (9,) float64, the
  :class:`~cocoseg.structures.LetterboxParams` that maps original pixels to this image
  (:meth:`~cocoseg.structures.LetterboxParams.to_array`; all NaN after mosaic/affine/flip, where
  no such mapping exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cocoseg.structures import NO_LETTERBOX, LetterboxParams
from cocoseg.utils import UserError

__all__ = ["MASK_RATIO", "NUM_POINTS", "AnnotationError", "Sample", "boxes_from_segments", "fill_polygon", "format_sample",
           "instances_from_annotations", "merge_parts", "overlap_map", "resample_polygon", "resample_polygons"]

MASK_RATIO = 4  # masks live at 1/4 of the network input (spec 8.6)
NUM_POINTS = 1000  # points per resampled polygon (spec 8.1)


class AnnotationError(UserError):
    """An annotation of a snapshot row is malformed (bad category, odd polygon length, ...)."""


@dataclass
class Sample:
    """One image and its instances, in pixels of ``image``.

    - ``image``: (H, W, 3) uint8 RGB;
    - ``cls``: (n,) int64 class 0..nc-1;
    - ``segments``: (n, K, 2) float32 polygon points, continuous pixel xy;
    - ``image_id``: COCO image id; ``orig_hw``: the size the row was decoded at;
    - ``letterbox``: how the original was placed into ``image`` (made where it was letterboxed),
      or None when the image went through mosaic, a random affine or a flip.
    """

    image: np.ndarray
    cls: np.ndarray
    segments: np.ndarray
    image_id: int = -1
    orig_hw: tuple[int, int] = (0, 0)
    letterbox: LetterboxParams | None = field(default=None)

    @property
    def num_instances(self) -> int:
        return int(self.cls.shape[0])


def resample_polygon(points: np.ndarray, num_points: int = NUM_POINTS) -> np.ndarray:
    """Close a (m, 2) polygon and resample it to (num_points, 2) float32, linear in the vertex index."""
    return resample_polygons([points], num_points)[0]


def resample_polygons(polygons: Sequence[np.ndarray], num_points: int = NUM_POINTS) -> np.ndarray:
    """Close each (m_i, 2) polygon and resample it to ``num_points`` points, linear in the vertex
    index: all polygons in one set of array operations. Returns (n, num_points, 2) float32.

    Point j of polygon i sits at index ``a = j * m_i / (num_points - 1)`` of its closed ring
    (the first vertex appended), between vertices ``floor(a)`` and ``floor(a) + 1``: the same
    numbers ``np.interp`` over ``np.linspace`` gives, without a call per polygon.
    """
    n = len(polygons)
    if n == 0:
        return np.zeros((0, num_points, 2), np.float32)
    lengths = np.fromiter((len(p) for p in polygons), np.int64, count=n)  # m_i vertices
    flat = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in polygons])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    step = lengths / max(num_points - 1, 1)  # ring index advance per output point
    at = np.arange(num_points)[None, :] * step[:, None]
    at[:, -1] = lengths  # np.linspace ends exactly on the last index
    j = np.minimum(np.floor(at).astype(np.int64), (lengths - 1)[:, None])
    frac = at - j
    lo = j + starts[:, None]  # vertex floor(a); the next one wraps to the ring's first vertex
    hi = np.where(j + 1 == lengths[:, None], starts[:, None], lo + 1)
    out = np.empty((n, num_points, 2), np.float32)
    for c in (0, 1):  # x, then y: 1-D gathers, several times faster than gathering (x, y) pairs
        v = np.ascontiguousarray(flat[:, c])
        a = v[lo]
        out[..., c] = a + frac * (v[hi] - a)
    return out


def merge_parts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Merge several (m_i, 2) polygon parts into one ring with zero-width bridges.

    Each further part is spliced in at the vertex of the ring closest to it: ring up to vertex i,
    the part (rotated to start at its closest vertex j, and closed), then back to vertex i.
    """
    merged = np.asarray(parts[0], dtype=np.float32)
    for part in parts[1:]:
        part = np.asarray(part, dtype=np.float32)
        dist = ((merged[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(dist.argmin()), dist.shape)
        ring = np.roll(part, -int(j), axis=0)
        ring = np.concatenate([ring, ring[:1]], axis=0)
        merged = np.concatenate([merged[:i + 1], ring, merged[i:]], axis=0)
    return merged


def instances_from_annotations(annotations: Sequence[Mapping[str, Any]] | None, *, record: str,
                               num_classes: int = 80, num_points: int = NUM_POINTS,
                               scale_xy: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Snapshot annotations (pixels of the stored image) -> ``cls (n,) int64, segments (n, K, 2) float32``.

    ``scale_xy`` multiplies the coordinates (to follow a resize at decode time). Crowd regions
    and annotations without a polygon of >= 3 points are skipped.
    """
    classes: list[int] = []
    rings: list[np.ndarray] = []
    sx, sy = scale_xy
    scale = np.float32([sx, sy])
    # explicit None checks: columns may arrive as numpy arrays, whose truth value is ambiguous
    for k, ann in enumerate(annotations if annotations is not None else ()):
        if ann.get("iscrowd"):
            continue
        parts = []
        polygons = ann.get("polygons")
        for poly in polygons if polygons is not None else ():
            flat = np.asarray(poly, dtype=np.float32)
            if flat.size % 2:
                raise AnnotationError(f"image {record}, annotation {ann.get('id', k)}: a polygon has an odd "
                                      f"number of coordinates ({flat.size}); expected x0,y0,x1,y1,...")
            if flat.size >= 6:
                parts.append(flat.reshape(-1, 2) * scale)
        if not parts:
            continue
        category = ann.get("category")
        if category is None or not 0 <= int(category) < num_classes:
            raise AnnotationError(f"image {record}, annotation {ann.get('id', k)}: category {category!r} is "
                                  f"outside 0..{num_classes - 1}")
        classes.append(int(category))
        rings.append(parts[0] if len(parts) == 1 else merge_parts(parts))
    if not rings:
        return np.zeros(0, np.int64), np.zeros((0, num_points, 2), np.float32)
    return np.asarray(classes, np.int64), resample_polygons(rings, num_points)


def boxes_from_segments(segments: np.ndarray) -> np.ndarray:
    """(n, K, 2) points -> (n, 4) xyxy extents, float32."""
    if len(segments) == 0:
        return np.zeros((0, 4), np.float32)
    # reduce x and y separately: a reduction over the middle axis of (n, K, 2) runs numpy's inner
    # loop over the last axis, two elements at a time, ~20x slower
    x, y = segments[..., 0], segments[..., 1]
    return np.stack([x.min(axis=1), y.min(axis=1), x.max(axis=1), y.max(axis=1)], axis=1).astype(np.float32)


def fill_polygon(points: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels whose centre ``(j + 0.5, i + 0.5)`` lies inside the (K, 2) polygon (even-odd).

    A vectorised scanline: every edge crossing a row's centre line toggles the parity of all pixels
    whose centre lies to its right; a cumulative sum of the toggles gives inside/outside. Each edge
    is intersected only with the rows it spans (half-open: a row centre ``y`` is crossed when
    ``min(y_p, y_q) <= y < max(y_p, y_q)``, so a shared vertex counts once), so the work grows with
    the polygon's points plus its crossings, not points x rows. Edges walked there and back (the
    bridges of :func:`merge_parts`) cancel and leave no trace.
    """
    h, w = out_hw
    p = np.asarray(points, np.float64)
    q = np.roll(p, -1, axis=0)
    lo_y, hi_y = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
    first_row = np.clip(np.ceil(lo_y - 0.5), 0, h).astype(np.int64)  # rows i with lo <= i + 0.5 < hi
    end_row = np.clip(np.ceil(hi_y - 0.5), 0, h).astype(np.int64)
    counts = np.maximum(end_row - first_row, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros((h, w), np.bool_)
    edges = np.repeat(np.arange(len(p)), counts)
    rows = first_row[edges] + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    y = rows + 0.5
    t = (y - p[edges, 1]) / (q[edges, 1] - p[edges, 1])
    x = p[edges, 0] + t * (q[edges, 0] - p[edges, 0])
    first = np.clip(np.floor(x - 0.5).astype(np.int64) + 1, 0, w)  # first pixel with centre > x
    toggles = np.bincount(rows * (w + 1) + first, minlength=h * (w + 1)).reshape(h, w + 1)
    return (np.cumsum(toggles[:, :w], axis=1) & 1).astype(np.bool_)


def _fill_boxes(polys: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise (n, K, 2) float64 polygons (pixels of an ``out_hw`` frame), each inside its own
    bounding box, all in one pass: the scanline of :func:`fill_polygon` over every edge of every
    polygon at once. Returns ``inside`` (flat uint8: instance i's box of ``bh_i x (bw_i + 1)``
    cells, row-major, from ``offsets[i]``), ``offsets`` (n + 1,) and ``boxes`` (n, 4) int64
    ``x0, y0, bw, bh``.

    One cumulative sum over all boxes gives every cell's parity: each polygon crosses each row
    centre line an even number of times (crossings right of the box land in its extra column),
    so the parity is back to 0 at the end of every box row.
    """
    h, w = out_hw
    n, k = polys.shape[:2]
    px, py = np.ascontiguousarray(polys[..., 0]), np.ascontiguousarray(polys[..., 1])  # (n, K) each
    x0 = np.maximum(np.floor(px.min(axis=1)).astype(np.int64), 0)
    y0 = np.maximum(np.floor(py.min(axis=1)).astype(np.int64), 0)
    bw = np.maximum(np.minimum(np.ceil(px.max(axis=1)).astype(np.int64) + 1, w) - x0, 0)
    bh = np.maximum(np.minimum(np.ceil(py.max(axis=1)).astype(np.int64) + 1, h) - y0, 0)
    bh[bw == 0] = 0
    offsets = np.concatenate([[0], np.cumsum(bh * (bw + 1))])
    boxes = np.stack([x0, y0, bw, bh], axis=1)
    px -= x0[:, None]
    py -= y0[:, None]
    qx, qy = np.roll(px, -1, axis=1).ravel(), np.roll(py, -1, axis=1).ravel()  # each edge's end point
    px, py = px.ravel(), py.ravel()
    rows_of = np.repeat(bh, k)
    first_row = np.clip(np.ceil(np.minimum(py, qy) - 0.5), 0, rows_of).astype(np.int64)  # rows i with lo <= i + 0.5 < hi
    end_row = np.clip(np.ceil(np.maximum(py, qy) - 0.5), 0, rows_of).astype(np.int64)
    counts = end_row - first_row
    crossing = np.flatnonzero(counts > 0)  # most edges of a 1,000-point ring cross no row centre
    if len(crossing) == 0:
        return np.zeros(int(offsets[-1]), np.uint8), offsets, boxes
    counts = counts[crossing]
    total = int(counts.sum())
    edges = np.repeat(crossing, counts)
    rows = first_row[edges] + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    t = (rows + 0.5 - py[edges]) / (qy[edges] - py[edges])
    x = px[edges] + t * (qx[edges] - px[edges])
    inst = edges // k
    first = np.clip(np.floor(x - 0.5).astype(np.int64) + 1, 0, bw[inst])  # first pixel with centre > x
    cells = offsets[inst] + rows * (bw[inst] + 1) + first
    toggles = np.bincount(cells, minlength=int(offsets[-1]))
    return (np.cumsum(toggles) & 1).astype(np.uint8), offsets, boxes


def overlap_map(segments: np.ndarray, out_hw: tuple[int, int], ratio: int = MASK_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise polygons into one overlap map at 1/``ratio`` (spec 8.6).

    Each polygon is filled directly at that resolution (coordinates / ratio), inside its own
    bounding box only: a pixel is set when its centre lies inside (the rule of
    :func:`fill_polygon`, all instances in one pass), which equals point-sampling the
    full-resolution mask at the cell centres. Instances are painted largest first, so where they
    overlap the smaller one wins. Returns the ``(H/ratio, W/ratio)`` map, whose value k >= 1 is
    instance ``order[k-1]`` (uint8, or int16 / int32 when there are more instances than that
    holds), and ``order`` (n,) int64, the permutation that sorts instances by mask area,
    descending (stable).
    """
    h, w = out_hw[0] // ratio, out_hw[1] // ratio
    n = len(segments)
    dtype = np.uint8 if n <= np.iinfo(np.uint8).max else np.int16 if n <= np.iinfo(np.int16).max else np.int32
    out = np.zeros((h, w), dtype)
    if n == 0:
        return out, np.zeros(0, np.int64)
    inside, offsets, boxes = _fill_boxes(np.asarray(segments, np.float64) / ratio, (h, w))
    masks = [inside[offsets[i]:offsets[i + 1]].view(np.bool_).reshape(bh, bw + 1)[:, :bw]
             for i, (_, _, bw, bh) in enumerate(boxes.tolist())]  # each instance inside its box
    order = np.argsort([-np.count_nonzero(m) for m in masks], kind="stable")
    for rank, i in enumerate(order.tolist(), start=1):  # smaller instances later: they win
        x0, y0, bw, bh = boxes[i].tolist()
        np.copyto(out[y0:y0 + bh, x0:x0 + bw], rank, where=masks[i], casting="unsafe")
    return out, order.astype(np.int64)


def format_sample(sample: Sample, ratio: int = MASK_RATIO) -> dict[str, np.ndarray]:
    """Sample -> one output row (see the module docstring), instances reordered to match the overlap map."""
    h, w = sample.image.shape[:2]
    masks, order = overlap_map(sample.segments, (h, w), ratio)
    boxes = boxes_from_segments(sample.segments)[order]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    labels = np.empty((len(order), 5), np.float32)
    labels[:, 0] = sample.cls[order]
    labels[:, 1] = (boxes[:, 0] + boxes[:, 2]) / (2 * w)
    labels[:, 2] = (boxes[:, 1] + boxes[:, 3]) / (2 * h)
    labels[:, 3] = (boxes[:, 2] - boxes[:, 0]) / w
    labels[:, 4] = (boxes[:, 3] - boxes[:, 1]) / h
    lb = sample.letterbox.to_array() if sample.letterbox is not None else NO_LETTERBOX
    return {
        "image": np.ascontiguousarray(sample.image),
        "masks": masks,
        "labels": labels,
        "image_id": np.int64(sample.image_id),
        "orig_hw": np.asarray(sample.orig_hw, np.int32),
        "letterbox": lb,
    }
