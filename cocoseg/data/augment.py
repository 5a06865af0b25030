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
to the input size (spec 8.3), decoded once per chunk (each serves as its own mosaic's first
image and as a partner of others); the transforms live in :mod:`cocoseg.data.transforms`.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from cocoseg.data.decode import decode_into, decode_resized, opencv, resized_shape
from cocoseg.data.instances import NUM_POINTS, Sample, boxes_from_segments, instances_from_annotations
from cocoseg.data.letterbox import LetterboxParams, letterbox, letterbox_params
from cocoseg.data.transforms import (
    AugmentPreset,
    _letterbox_affine,
    _mosaic_affine,
    augment_hsv,
    colour_matrix,
    flip_horizontal,
    flip_vertical,
    mosaic4,
    random_affine,
    warp_affine,
)
from cocoseg.utils import UserError

cv2 = opencv()  # the training path needs it: import it (and set its threads) with this module

__all__ = ["PRESETS", "AugmentPreset", "MosaicBuffer", "augment_chunk", "augment_hsv", "augment_rows", "colour_matrix", "flip_horizontal", "flip_vertical",
           "get_preset", "image_rng", "load_letterboxed", "load_sample", "mosaic4", "preset_for_epoch", "random_affine", "warp_affine"]


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


def _load_unpadded(row: Mapping[str, Any], out_hw: tuple[int, int], *, scaleup: bool, num_classes: int,
                   num_points: int, into: np.ndarray | None = None) -> tuple[Sample, LetterboxParams]:
    """A row decoded at its letterbox size, not yet padded: the image is ``params.resized_hw``, the
    polygons are already in the padded frame (shifted by the padding).

    ``into``: an ``out_hw`` (H, W, 3) uint8 array; a JPEG that needs no resize and fills whole rows
    of it (COCO's landscape photos) is decoded straight into its place there (then ``image`` is
    that view of ``into``, and only the padding is left to fill)."""
    h0, w0 = _row_hw(row)
    params = letterbox_params((h0, w0), out_hw, scaleup=scaleup)
    rh, rw = params.resized_hw
    resized = None
    if into is not None and (rh, rw) == (h0, w0) and params.pad_left == 0:
        resized = decode_into(row["image"], into[params.pad_top:params.pad_top + rh])
    if resized is None:
        resized, _ = decode_resized(row["image"], (rh, rw), record=_record(row), expect_wh=(w0, h0))
    cls, segments = instances_from_annotations(row.get("annotations"), record=_record(row),
                                               num_classes=num_classes, num_points=num_points,
                                               scale_xy=(rw / w0, rh / h0))
    segments += np.float32([params.pad_left, params.pad_top])
    smp = Sample(resized, cls, segments, image_id=int(row.get("image_id", -1)), orig_hw=(h0, w0),
                 letterbox=params)
    return smp, params


def load_letterboxed(row: Mapping[str, Any], out_hw: tuple[int, int], *, scaleup: bool = True,
                     num_classes: int = 80, num_points: int = NUM_POINTS) -> Sample:
    """Decode a row straight into an ``out_hw`` letterbox (one resize), recording gain and padding."""
    smp, params = _load_unpadded(row, out_hw, scaleup=scaleup, num_classes=num_classes, num_points=num_points)
    image, _ = letterbox(smp.image, out_hw, params=params)
    return replace(smp, image=image)


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


# --------------------------------------------------------------------------------------------
# The chain


def _mosaic(sources: Sequence[Sample], p: AugmentPreset, imgsz: int, rng: np.random.Generator,
            dst: np.ndarray | None = None, boxes: Sequence[np.ndarray] | None = None) -> Sample:
    """Mosaic of four loaded samples, then the affine when the preset has one (into ``dst``)."""
    if p.affine:
        return _mosaic_affine(sources, imgsz, (imgsz, imgsz), p, rng, dst, boxes)
    return mosaic4(sources, imgsz, rng)


def _single(row: Mapping[str, Any], p: AugmentPreset, imgsz: int, rng: np.random.Generator, *, num_classes: int,
            num_points: int, dst: np.ndarray | None = None) -> Sample:
    """One row letterboxed to imgsz x imgsz, then the affine when the preset has one (the padding
    folded into the warp); the image goes into ``dst`` when given."""
    out_hw = (imgsz, imgsz)
    smp, params = _load_unpadded(row, out_hw, scaleup=p.scaleup, num_classes=num_classes, num_points=num_points,
                                 into=None if p.affine else dst)
    if p.affine:
        return _letterbox_affine(smp, params, out_hw, p, rng, dst)
    return replace(smp, image=letterbox(smp.image, out_hw, params=params, dst=dst)[0])


def _colour_flip(smp: Sample, p: AugmentPreset, rng: np.random.Generator, *, in_place: bool = False) -> Sample:
    """The per-image tail of every chain after the geometry: HSV, flips (where the preset asks).
    ``in_place``: overwrite ``smp.image`` (a buffer the chain owns) instead of making new ones."""
    gains = rng.uniform(-1, 1, 3) * np.asarray(p.hsv_gains, np.float64) + 1 if any(p.hsv_gains) else None
    lr = p.fliplr > 0 and rng.random() < p.fliplr
    ud = p.flipud > 0 and rng.random() < p.flipud
    image = smp.image
    if gains is not None:
        image = cv2.transform(image, colour_matrix(gains).astype(np.float32), dst=image if in_place else None)
    if lr or ud:
        image = cv2.flip(image, -1 if lr and ud else 1 if lr else 0, dst=image if in_place else None)
        segments = smp.segments.copy()
        h, w = image.shape[:2]
        if lr:
            segments[..., 0] = w - segments[..., 0]
        if ud:
            segments[..., 1] = h - segments[..., 1]
        return Sample(image, smp.cls, segments, image_id=smp.image_id, orig_hw=smp.orig_hw, letterbox=None)
    return replace(smp, image=image)


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
    if p.mosaic > 0 and buffer is None:
        raise AugmentError(f"preset {p.name!r} uses mosaic and needs a MosaicBuffer")
    samples = []
    for row in rows:
        if p.mosaic > 0 and rng.random() < p.mosaic:
            current = load_sample(row, imgsz, num_classes=num_classes, num_points=num_points)
            buffer.add(current)
            smp = _mosaic([current, *buffer.draw(rng, 3)], p, imgsz, rng)
        else:
            smp = _single(row, p, imgsz, rng, num_classes=num_classes, num_points=num_points)
            if buffer is not None and p.mosaic > 0:
                buffer.add(load_sample(row, imgsz, num_classes=num_classes, num_points=num_points))
        samples.append(_colour_flip(smp, p, rng))
    return samples


def image_rng(seed: int, epoch: int, image_id: int) -> np.random.Generator:
    """The generator of one image in one epoch: keyed on (seed, epoch, image id) only, never on
    the worker, the actor, the batch or the arrival order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & _MASK63, int(epoch) & _MASK63,
                                                         int(image_id) & _MASK63, _AUGMENT_TAG]))


_MASK63 = (1 << 63) - 1
_AUGMENT_TAG = 0x617567  # "aug": keeps these streams apart from other seeded streams of a run


def augment_chunk(rows: Sequence[Mapping[str, Any]], *, preset: str | AugmentPreset, imgsz: int,
                  seed: int, epoch: int, num_classes: int = 80, num_points: int = NUM_POINTS,
                  out: np.ndarray | None = None) -> list[Sample]:
    """Chunk form, reproducible: each row gets :func:`image_rng` (seed, epoch, its image id).

    Mosaic partners are drawn with the row's own generator among the *other* rows of the chunk
    (all decoded first; candidates in image-id order), so a row's output depends on (seed, epoch,
    image id, the set of the chunk's rows) and on nothing that happened before or elsewhere. Whoever forms the chunks decides what
    "the same chunk" means (``cocoseg.data.stage.epoch_chunks``: seeded by (seed, epoch)).
    A one-row chunk mosaics the image with itself.

    ``out``: a (len(rows), imgsz, imgsz, 3) uint8 array; each output image is made in its row of
    it (saves a fresh 1.2 MB image per step at 640 and the final stacking copy). Not for presets
    that mosaic without an affine (their images are 2 x imgsz).
    """
    p = get_preset(preset)
    rngs = [image_rng(seed, epoch, int(r.get("image_id", -1))) for r in rows]
    loaded: list[Sample | None] = [None] * len(rows)
    if p.mosaic > 0:
        loaded = [load_sample(r, imgsz, num_classes=num_classes, num_points=num_points) for r in rows]
        boxes = [boxes_from_segments(smp.segments) for smp in loaded]  # each row joins ~4 mosaics
    samples = []
    by_id = sorted(range(len(rows)), key=lambda j: int(rows[j].get("image_id", -1)))  # order-free choice
    for i, (row, rng) in enumerate(zip(rows, rngs, strict=True)):
        dst = out[i] if out is not None else None
        if p.mosaic > 0 and rng.random() < p.mosaic:
            others = [j for j in by_id if j != i] or [i]
            picks = rng.choice(len(others), size=3, replace=len(others) < 3)
            chosen = [i, *(others[int(k)] for k in picks)]
            smp = _mosaic([loaded[j] for j in chosen], p, imgsz, rng, dst, [boxes[j] for j in chosen])
        else:
            smp = _single(row, p, imgsz, rng, num_classes=num_classes, num_points=num_points, dst=dst)
        smp = _colour_flip(smp, p, rng, in_place=dst is not None and np.may_share_memory(smp.image, dst))
        if dst is not None and not np.may_share_memory(smp.image, dst):  # a step that could not work in place
            dst[...] = smp.image
            smp = replace(smp, image=dst)
        samples.append(smp)
    return samples
