"""Per-batch functions of the input pipeline: snapshot rows in, augmented model-ready rows out.

:class:`AugmentBatch` is the callable class that ``Dataset.map_batches`` runs in a Ray Data actor
(it holds the preset, seed, epoch and the mosaic buffer); the same object works without Ray, for
example inside a torch ``DataLoader`` worker. This module does not import Ray.

Output columns (one row per image; see :mod:`cocoseg.data.instances` for their meaning):
``image`` (B, S, S, 3) uint8 (HWC), ``masks`` (B, S/4, S/4) int32, ``labels`` (B,) of bytes (each the
raw little-endian float32 buffer of an (n, 5) array: a binary column keeps ragged instance lists
cheap and type-stable in Arrow), ``image_id`` (B,) int64, ``orig_hw`` (B, 2) int32,
``letterbox`` (B, 3) float32.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cocoseg.data.augment import MosaicBuffer, augment_rows, get_preset
from cocoseg.data.instances import NUM_POINTS, format_sample

__all__ = ["INPUT_COLUMNS", "AugmentBatch", "batch_seed", "rows_from_batch", "stack_rows"]

INPUT_COLUMNS = ("image_id", "width", "height", "image", "annotations")


def rows_from_batch(batch: Any) -> list[dict[str, Any]]:
    """A pyarrow Table, a dict of columns (numpy/lists) or a list of row dicts -> list of row dicts."""
    if isinstance(batch, list):
        return batch
    if hasattr(batch, "to_pylist") and hasattr(batch, "column_names"):  # pyarrow Table / RecordBatch
        present = [c for c in INPUT_COLUMNS if c in batch.column_names]
        return batch.select(present).to_pylist()
    if isinstance(batch, Mapping):
        names = [c for c in INPUT_COLUMNS if c in batch]
        n = len(batch[names[0]]) if names else 0
        return [{c: batch[c][i] for c in names} for i in range(n)]
    raise TypeError(f"unsupported batch type {type(batch).__name__}")


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]], imgsz: int) -> dict[str, np.ndarray]:
    """Formatted sample rows -> one column batch (``labels`` as float32 bytes, see module doc)."""
    b = len(rows)
    if b == 0:
        s, m = imgsz, imgsz // 4
        return {"image": np.zeros((0, s, s, 3), np.uint8), "masks": np.zeros((0, m, m), np.int32),
                "labels": np.zeros(0, object), "image_id": np.zeros(0, np.int64),
                "orig_hw": np.zeros((0, 2), np.int32), "letterbox": np.zeros((0, 3), np.float32)}
    labels = np.empty(b, dtype=object)
    labels[:] = [np.ascontiguousarray(r["labels"], np.float32).tobytes() for r in rows]
    return {
        "image": np.stack([r["image"] for r in rows]),
        "masks": np.stack([r["masks"] for r in rows]),
        "labels": labels,
        "image_id": np.asarray([r["image_id"] for r in rows], np.int64),
        "orig_hw": np.stack([r["orig_hw"] for r in rows]),
        "letterbox": np.stack([r["letterbox"] for r in rows]),
    }


def batch_seed(seed: int, epoch: int, rows: Sequence[Mapping[str, Any]]) -> np.random.SeedSequence:
    """Seed of one batch: (seed, epoch, first image id, batch length).

    Keyed on the batch's content rather than on which actor runs it, so the same rows in the same
    epoch get the same draws however Ray schedules them (mosaic partners still depend on what the
    actor's buffer saw before).
    """
    first = int(rows[0].get("image_id", 0)) if rows else 0
    return np.random.SeedSequence([seed, epoch, first & 0x7FFFFFFFFFFFFFFF, len(rows)])


class AugmentBatch:
    """``map_batches`` callable: decode + augment + format a batch of snapshot rows.

    Args (keywords): ``preset`` name (:data:`cocoseg.data.augment.PRESETS`), ``imgsz`` output side
    (multiple of 32), ``seed``, ``epoch`` (None: a fresh random stream per instance, so every epoch
    of a long-running Ray dataset differs; an int makes batches reproducible), ``buffer_size``
    (mosaic partners kept in memory; spec 8.3 uses min(N, 8 x batch, 1000)), ``num_classes``,
    ``num_points`` per resampled polygon.
    """

    def __init__(self, *, preset: str, imgsz: int, seed: int = 0, epoch: int | None = None,
                 buffer_size: int = 64, num_classes: int = 80, num_points: int = NUM_POINTS):
        self.preset = get_preset(preset)
        self.imgsz = int(imgsz)
        self.seed = int(seed)
        self.epoch = int(epoch) if epoch is not None else secrets.randbits(62)
        self.num_classes = num_classes
        self.num_points = num_points
        self.buffer = MosaicBuffer(buffer_size) if self.preset.mosaic > 0 else None

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        rows = rows_from_batch(batch)
        rng = np.random.default_rng(batch_seed(self.seed, self.epoch, rows))
        samples = augment_rows(rows, preset=self.preset, imgsz=self.imgsz, rng=rng, buffer=self.buffer,
                               num_classes=self.num_classes, num_points=self.num_points)
        return stack_rows([format_sample(s) for s in samples], self.imgsz)
