"""Training augmentation (spec 8.4): named presets of pure functions, image and polygons together.

Every function takes an explicit ``np.random.Generator`` and returns new arrays; nothing reads a
global RNG. A :class:`~cocoseg.data.instances.Sample` carries the image and its instance polygons
(continuous pixel xy), so one matrix moves both. Presets:

- ``"yolov8"``: mosaic (p=1) -> random affine (scale 0.5-1.5, translate +-0.1) -> HSV
  (0.015, 0.7, 0.4) -> horizontal flip (p=0.5). The classic YOLOv8 chain.
- ``"yolov8-close"``: the same without mosaic (letterbox -> affine -> HSV -> flip), used for the
  last ``close_mosaic`` epochs (:func:`preset_for_epoch`).
- ``"val"``: letterbox only; keeps the letterbox parameters to map predictions back.

Two forms of the chain: :func:`augment_chunk` (training input) seeds each image from (seed,
epoch, image id) and draws its mosaic partners among the other rows of its chunk, so the output
does not depend on timing; :func:`augment_rows` (stream form) shares one generator and draws
partners from a bounded :class:`MosaicBuffer` of the stream's recent images. Neither uses random
access into the dataset. Images are loaded with the longer side equal
to the input size (spec 8.3); Pillow does the resampling (no OpenCV).
"""

from __future__ import annotations

import io
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from cocoseg.utils import UserError
from frozen_augment.decode import decode_resized, resized_shape
from frozen_augment.instances import NUM_POINTS, Sample, boxes_from_segments, instances_from_annotations
from frozen_augment.letterbox import FILL, letterbox, letterbox_params

__all__ = ["PRESETS", "AugmentPreset", "MosaicBuffer", "augment_chunk", "augment_hsv", "augment_rows", "colour_matrix", "flip_horizontal", "flip_vertical",
           "get_preset", "image_rng", "load_letterboxed", "load_sample", "mosaic4", "preset_for_epoch", "random_affine", "warp_affine"]


@dataclass(frozen=True)
class AugmentPreset:
    """A named augmentation policy. Probabilities in 0..1; ``degrees``/``shear`` in degrees;
    ``translate`` a fraction of the output size; ``scale`` the half-width of the zoom range."""

    name: str
    mosaic: float = 0.0
    affine: bool = False
    degrees: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    hsv_gains: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fliplr: float = 0.0
    flipud: float = 0.0
    scaleup: bool = True  # letterbox may enlarge small images
    min_wh_px: float = 2.0  # affine keeps an instance only if its box is wider and taller than this,
    min_area_ratio: float = 0.01  # keeps this fraction of its zoom-corrected area,
    max_aspect: float = 100.0  # and is not thinner than this


_YOLOV8 = AugmentPreset("yolov8", mosaic=1.0, affine=True, translate=0.1, scale=0.5,
                        hsv_gains=(0.015, 0.7, 0.4), fliplr=0.5)
PRESETS: dict[str, AugmentPreset] = {
    "yolov8": _YOLOV8,
    "yolov8-close": replace(_YOLOV8, name="yolov8-close", mosaic=0.0),
    "val": AugmentPreset("val"),
}
_CLOSED = {"yolov8": "yolov8-close"}


class AugmentError(UserError):
    """An unknown preset name or bad augmentation arguments."""


def get_preset(name: str | AugmentPreset) -> AugmentPreset:
    if isinstance(name, AugmentPreset):
        return name
    if name not in PRESETS:
        raise AugmentError(f"unknown augmentation preset {name!r}; choose one of {', '.join(PRESETS)} "
                           f"(config key train.augment)")
    return PRESETS[name]


def preset_for_epoch(name: str, epoch: int, epochs: int, close_mosaic: int) -> str:
    """The preset for a 0-based ``epoch``: mosaic presets close for the last ``close_mosaic`` epochs."""
    get_preset(name)
    if epoch >= epochs - close_mosaic and name in _CLOSED:
        return _CLOSED[name]
    return name


# --------------------------------------------------------------------------------------------
# Loading rows


def _row_hw(row: Mapping[str, Any]) -> tuple[int, int]:
    if row.get("width") and row.get("height"):
        return int(row["height"]), int(row["width"])
    with Image.open(io.BytesIO(row["image"])) as img:  # header only
        return img.height, img.width


def _record(row: Mapping[str, Any]) -> str:
    return f"image_id={row.get('image_id', '?')}"


def load_sample(row: Mapping[str, Any], long_side: int, *, num_classes: int = 80,
                num_points: int = NUM_POINTS) -> Sample:
    """Decode a snapshot row with its longer side resized to ``long_side`` (spec 8.3)."""
    h0, w0 = _row_hw(row)
    h1, w1 = resized_shape(h0, w0, long_side)
    image, _ = decode_resized(row["image"], (h1, w1), record=_record(row), expect_wh=(w0, h0))
    cls, segments = instances_from_annotations(row.get("annotations"), record=_record(row),
                                               num_classes=num_classes, num_points=num_points,
                                               scale_xy=(w1 / w0, h1 / h0))
    return Sample(image, cls, segments, image_id=int(row.get("image_id", -1)), orig_hw=(h0, w0))


def load_letterboxed(row: Mapping[str, Any], out_hw: tuple[int, int], *, scaleup: bool = True,
                     num_classes: int = 80, num_points: int = NUM_POINTS) -> Sample:
    """Decode a row straight into an ``out_hw`` letterbox (one resize), recording gain and padding."""
    h0, w0 = _row_hw(row)
    params = letterbox_params((h0, w0), out_hw, scaleup=scaleup)
    rh, rw = params.resized_hw
    resized, _ = decode_resized(row["image"], (rh, rw), record=_record(row), expect_wh=(w0, h0))
    image, _ = letterbox(resized, out_hw, params=params)
    cls, segments = instances_from_annotations(row.get("annotations"), record=_record(row),
                                               num_classes=num_classes, num_points=num_points,
                                               scale_xy=(rw / w0, rh / h0))
    segments += np.float32([params.pad_left, params.pad_top])
    return Sample(image, cls, segments, image_id=int(row.get("image_id", -1)), orig_hw=(h0, w0),
                  letterbox=(params.gain, float(params.pad_left), float(params.pad_top)))


# --------------------------------------------------------------------------------------------
# Transforms (pure: new arrays out, the rng the only source of randomness)


class MosaicBuffer:
    """The most recent ``capacity`` loaded samples of a stream; mosaic partners are drawn from it."""

    def __init__(self, capacity: int = 64):
        if capacity < 1:
            raise AugmentError(f"mosaic buffer capacity must be >= 1, got {capacity}")
        self._items: deque[Sample] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sample: Sample) -> None:
        self._items.append(sample)

    def draw(self, rng: np.random.Generator, k: int) -> list[Sample]:
        """``k`` samples drawn uniformly with replacement."""
        if not self._items:
            raise AugmentError("mosaic buffer is empty: add the current sample before drawing partners")
        return [self._items[int(i)] for i in rng.integers(0, len(self._items), size=k)]


def _clip_drop(segments: np.ndarray, cls: np.ndarray, w: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip points to the [0, w] x [0, h] frame and drop instances whose box has no area."""
    segments = segments.copy()
    np.clip(segments[..., 0], 0, w, out=segments[..., 0])
    np.clip(segments[..., 1], 0, h, out=segments[..., 1])
    boxes = boxes_from_segments(segments)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return segments[keep], cls[keep]


def mosaic4(samples: Sequence[Sample], size: int, rng: np.random.Generator) -> Sample:
    """Four samples (longer side ``size``) around a random centre of a 2*size canvas (spec 8.4.1).

    Sample 0 ends at the centre (top-left quadrant), 1 to its right, 2 below it, 3 diagonally;
    each is cropped where it leaves the canvas. Returns a (2*size, 2*size, 3) sample.
    """
    s2 = 2 * size
    canvas = np.full((s2, s2, 3), FILL, np.uint8)
    xc, yc = (int(v) for v in rng.integers(size // 2, 3 * size // 2 + 1, size=2))
    segments, classes = [], []
    for k, smp in enumerate(samples[:4]):
        h, w = smp.image.shape[:2]
        x1 = max(xc - w, 0) if k in (0, 2) else xc  # canvas region, left/right of the centre
        x2 = xc if k in (0, 2) else min(xc + w, s2)
        y1 = max(yc - h, 0) if k in (0, 1) else yc  # above/below the centre
        y2 = yc if k in (0, 1) else min(yc + h, s2)
        sx = w - (x2 - x1) if k in (0, 2) else 0  # matching source offset (crop of the image)
        sy = h - (y2 - y1) if k in (0, 1) else 0
        canvas[y1:y2, x1:x2] = smp.image[sy:sy + (y2 - y1), sx:sx + (x2 - x1)]
        segments.append(smp.segments + np.float32([x1 - sx, y1 - sy]))
        classes.append(smp.cls)
    segs, cls = _clip_drop(np.concatenate(segments), np.concatenate(classes), s2, s2)
    first = samples[0]
    return Sample(canvas, cls, segs, image_id=first.image_id, orig_hw=first.orig_hw, letterbox=None)


def _affine_matrix(in_hw: tuple[int, int], out_hw: tuple[int, int], preset: AugmentPreset,
                   rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """M = T @ Sh @ R @ C (spec 8.4.3; no perspective): input centre -> origin, rotate+zoom, shear,
    then to a random point near the output centre. Returns the 3x3 matrix and the zoom."""
    h_in, w_in = in_hw
    h, w = out_hw
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -w_in / 2, -h_in / 2
    angle = math.radians(rng.uniform(-preset.degrees, preset.degrees))
    zoom = rng.uniform(1 - preset.scale, 1 + preset.scale)
    rot = np.eye(3)
    rot[:2, :2] = zoom * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear = np.eye(3)
    shear[0, 1] = math.tan(math.radians(rng.uniform(-preset.shear, preset.shear)))
    shear[1, 0] = math.tan(math.radians(rng.uniform(-preset.shear, preset.shear)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - preset.translate, 0.5 + preset.translate) * w
    move[1, 2] = rng.uniform(0.5 - preset.translate, 0.5 + preset.translate) * h
    return move @ shear @ rot @ centre, zoom


def _warp_scale_translate(image: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The axis-aligned case (no rotation or shear, the default presets): resize the visible part
    of the input with Pillow's ``resize(box=...)``, which is about twice as fast as a general affine
    warp and antialiases when shrinking. Output pixels only partly covered by the input get the fill."""
    h, w = out_hw
    sx, sy, tx, ty = matrix[0, 0], matrix[1, 1], matrix[0, 2], matrix[1, 2]
    h_in, w_in = image.shape[:2]
    x0, x1 = min(max(math.ceil(tx), 0), w), min(max(math.floor(tx + w_in * sx), 0), w)
    y0, y1 = min(max(math.ceil(ty), 0), h), min(max(math.floor(ty + h_in * sy), 0), h)
    out = np.full((h, w, 3), FILL, np.uint8)
    if x1 > x0 and y1 > y0:
        box = ((x0 - tx) / sx, (y0 - ty) / sy, (x1 - tx) / sx, (y1 - ty) / sy)  # input region, continuous px
        part = Image.fromarray(image).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box)
        out[y0:y1, x0:x1] = np.asarray(part)
    return out


def warp_affine(image: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Warp (H, W, 3) uint8 by the 3x3 ``matrix`` (input xy -> output xy, continuous pixels).

    Pillow wants the inverse map (output -> input) and samples at pixel centres, the same
    continuous convention the polygons use. Borders are filled with 114, bilinear sampling.
    """
    h, w = out_hw
    if matrix[0, 1] == 0 and matrix[1, 0] == 0 and matrix[0, 0] > 0 and matrix[1, 1] > 0:
        return _warp_scale_translate(image, matrix, out_hw)
    inv = np.linalg.inv(matrix)
    out = Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, data=tuple(inv[:2].ravel()),
                                           resample=Image.Resampling.BILINEAR, fillcolor=(FILL, FILL, FILL))
    return np.asarray(out)


def random_affine(sample: Sample, out_hw: tuple[int, int], preset: AugmentPreset,
                  rng: np.random.Generator) -> Sample:
    """Random zoom/translate (and optional rotation/shear) to ``out_hw``; polygons follow.

    Per instance (spec 8.4.3): the new box is the extent of the transformed points inside the
    frame, points are clipped to it, and the instance survives only if the box is wider and taller
    than ``min_wh_px``, keeps ``min_area_ratio`` of its zoom-corrected area and is not too thin.
    """
    matrix, zoom = _affine_matrix(sample.image.shape[:2], out_hw, preset, rng)
    image = warp_affine(sample.image, matrix, out_hw)
    h, w = out_hw
    old = boxes_from_segments(sample.segments)
    pts = sample.segments @ matrix[:2, :2].T.astype(np.float32) + matrix[:2, 2].astype(np.float32)
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= w) & (pts[..., 1] >= 0) & (pts[..., 1] <= h)
    big = np.float32(1e9)
    lo = np.where(inside[..., None], pts, big).min(axis=1)  # (n, 2) extent of the inside points
    hi = np.where(inside[..., None], pts, -big).max(axis=1)
    has = inside.any(axis=1)
    lo[~has], hi[~has] = 0, 0
    pts = np.clip(pts, lo[:, None, :], hi[:, None, :])
    bw, bh = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    old_area = (old[:, 2] - old[:, 0]) * (old[:, 3] - old[:, 1]) * zoom * zoom
    aspect = np.maximum(bw / (bh + 1e-16), bh / (bw + 1e-16))
    keep = (bw > preset.min_wh_px) & (bh > preset.min_wh_px) & \
        (bw * bh / (old_area + 1e-16) > preset.min_area_ratio) & (aspect < preset.max_aspect)
    return Sample(image, sample.cls[keep], pts[keep], image_id=sample.image_id, orig_hw=sample.orig_hw)


_LUMA = np.array([0.299, 0.587, 0.114])


def colour_matrix(gains: np.ndarray) -> np.ndarray:
    """3x3 RGB matrix for hue/saturation/value gains ``(g_h, g_s, g_v)`` (1 = unchanged).

    Hue turns about the grey axis by ``(g_h - 1) * 180`` degrees (the shift the spec's
    multiplicative OpenCV hue gain gives a mid-range hue), saturation scales the chroma around
    the luma by ``g_s``, value scales all channels by ``g_v``.
    """
    g_h, g_s, g_v = (float(x) for x in gains)
    angle = (g_h - 1.0) * math.pi
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rotate = math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(k, k)
    saturate = g_s * np.eye(3) + (1 - g_s) * np.outer(np.ones(3), _LUMA)
    return g_v * saturate @ rotate


def augment_hsv(image: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Random hue/saturation/value jitter with gains 1 + U(-1, 1) * gain (spec 8.4.6).

    Deliberate deviation from the spec's recipe (RGB -> OpenCV HSV -> lookup tables -> RGB): the
    same three gains are applied as one 3x3 colour matrix (:func:`colour_matrix`) in a single
    Pillow pass, about 25x faster than Pillow's HSV round trip, which alone cost more than the
    rest of the chain. Value and the hue/saturation directions match; saturation is measured
    against luma rather than HSV's max-min. Returns a new (H, W, 3) uint8 image (clipped).
    """
    if not any(gains):
        return image
    g = rng.uniform(-1, 1, 3) * np.asarray(gains, np.float64) + 1
    m = colour_matrix(g)
    matrix = (*m[0], 0.0, *m[1], 0.0, *m[2], 0.0)
    return np.asarray(Image.fromarray(image).convert("RGB", matrix=matrix))


def flip_horizontal(sample: Sample) -> Sample:
    """Mirror left-right: image columns reversed and x -> W - x (continuous pixels)."""
    w = sample.image.shape[1]
    segments = sample.segments.copy()
    segments[..., 0] = w - segments[..., 0]
    # a mirrored letterbox has no (gain, pad) inverse, hence letterbox=None
    return Sample(np.ascontiguousarray(sample.image[:, ::-1]), sample.cls, segments,
                  image_id=sample.image_id, orig_hw=sample.orig_hw, letterbox=None)


def flip_vertical(sample: Sample) -> Sample:
    """Mirror top-bottom: y -> H - y."""
    h = sample.image.shape[0]
    segments = sample.segments.copy()
    segments[..., 1] = h - segments[..., 1]
    return Sample(np.ascontiguousarray(sample.image[::-1]), sample.cls, segments,
                  image_id=sample.image_id, orig_hw=sample.orig_hw, letterbox=None)


# --------------------------------------------------------------------------------------------
# The chain


def _finish(smp: Sample, p: AugmentPreset, out_hw: tuple[int, int], rng: np.random.Generator) -> Sample:
    """The per-image tail of every chain: affine, HSV, flips (each only where the preset asks)."""
    if p.affine:
        smp = random_affine(smp, out_hw, p, rng)
    if any(p.hsv_gains):
        smp = replace(smp, image=augment_hsv(smp.image, p.hsv_gains, rng))
    if p.fliplr > 0 and rng.random() < p.fliplr:
        smp = flip_horizontal(smp)
    if p.flipud > 0 and rng.random() < p.flipud:
        smp = flip_vertical(smp)
    return smp


def augment_rows(rows: Sequence[Mapping[str, Any]], *, preset: str | AugmentPreset, imgsz: int,
                 rng: np.random.Generator, buffer: MosaicBuffer | None = None, num_classes: int = 80,
                 num_points: int = NUM_POINTS) -> list[Sample]:
    """Stream form: apply a preset's chain to each row, in order, with one shared ``rng``.
    Output images are imgsz x imgsz.

    ``buffer`` holds the stream's recent images for mosaic (required when the preset mosaics);
    every loaded row is added to it before its partners are drawn, so a row's output depends on
    what came before it. The training input uses :func:`augment_chunk`, which does not.
    """
    p = get_preset(preset)
    out_hw = (imgsz, imgsz)
    if p.mosaic > 0 and buffer is None:
        raise AugmentError(f"preset {p.name!r} uses mosaic and needs a MosaicBuffer")
    samples = []
    for row in rows:
        if p.mosaic > 0 and rng.random() < p.mosaic:
            current = load_sample(row, imgsz, num_classes=num_classes, num_points=num_points)
            buffer.add(current)
            smp = mosaic4([current, *buffer.draw(rng, 3)], imgsz, rng)
        else:
            smp = load_letterboxed(row, out_hw, scaleup=p.scaleup, num_classes=num_classes,
                                   num_points=num_points)
            if buffer is not None and p.mosaic > 0:
                buffer.add(load_sample(row, imgsz, num_classes=num_classes, num_points=num_points))
        samples.append(_finish(smp, p, out_hw, rng))
    return samples


def image_rng(seed: int, epoch: int, image_id: int) -> np.random.Generator:
    """The generator of one image in one epoch: keyed on (seed, epoch, image id) only, never on
    the worker, the actor, the batch or the arrival order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & _MASK63, int(epoch) & _MASK63,
                                                         int(image_id) & _MASK63, _AUGMENT_TAG]))


_MASK63 = (1 << 63) - 1
_AUGMENT_TAG = 0x617567  # "aug": keeps these streams apart from other seeded streams of a run


def augment_chunk(rows: Sequence[Mapping[str, Any]], *, preset: str | AugmentPreset, imgsz: int,
                  seed: int, epoch: int, num_classes: int = 80, num_points: int = NUM_POINTS) -> list[Sample]:
    """Chunk form, reproducible: each row gets :func:`image_rng` (seed, epoch, its image id).

    Mosaic partners are drawn with the row's own generator among the *other* rows of the chunk
    (all decoded first; candidates in image-id order), so a row's output depends on (seed, epoch,
    image id, the set of the chunk's rows) and on nothing that happened before or elsewhere. Whoever forms the chunks decides what
    "the same chunk" means (``cocoseg.data.stage.epoch_chunks``: seeded by (seed, epoch)).
    A one-row chunk mosaics the image with itself.
    """
    p = get_preset(preset)
    out_hw = (imgsz, imgsz)
    rngs = [image_rng(seed, epoch, int(r.get("image_id", -1))) for r in rows]
    loaded: list[Sample | None] = [None] * len(rows)
    if p.mosaic > 0:
        loaded = [load_sample(r, imgsz, num_classes=num_classes, num_points=num_points) for r in rows]
    samples = []
    by_id = sorted(range(len(rows)), key=lambda j: int(rows[j].get("image_id", -1)))  # order-free choice
    for i, (row, rng) in enumerate(zip(rows, rngs, strict=True)):
        if p.mosaic > 0 and rng.random() < p.mosaic:
            others = [j for j in by_id if j != i] or [i]
            picks = rng.choice(len(others), size=3, replace=len(others) < 3)
            smp = mosaic4([loaded[i], *(loaded[others[int(k)]] for k in picks)], imgsz, rng)
        else:
            smp = load_letterboxed(row, out_hw, scaleup=p.scaleup, num_classes=num_classes,
                                   num_points=num_points)
        samples.append(_finish(smp, p, out_hw, rng))
    return samples
