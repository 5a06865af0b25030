"""Per-batch functions of the input pipeline: snapshot rows in, augmented model-ready rows out.

:class:`AugmentBatch` is the callable that the input actors (``cocoseg.data.train_input``) run on one
chunk of rows (it holds the preset, seed and epoch; no state between calls); the same object works
without Ray, for example inside a torch ``DataLoader`` worker. :func:`epoch_chunks` plans which
rows form which chunk on which worker in an epoch. This module does not import Ray.

Output columns (one row per image; see :mod:`cocoseg.data.instances` for their meaning):
``image`` (B, S, S, 3) uint8 (HWC), ``masks`` (B, S/4, S/4) int32, ``labels`` (B,) of bytes (each the
raw little-endian float32 buffer of an (n, 5) array: a binary column keeps ragged instance lists
cheap and type-stable in Arrow), ``image_id`` (B,) int64, ``orig_hw`` (B, 2) int32,
``letterbox`` (B, 9) float64 (:meth:`cocoseg.structures.LetterboxParams.to_array` rows).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cocoseg import storage
from cocoseg.data.augment import augment_chunk, get_preset
from cocoseg.data.instances import MASK_RATIO, NUM_POINTS, format_sample
from cocoseg.data.repeat_factor import with_repeats
from cocoseg.structures import LETTERBOX_WIDTH

__all__ = ["INPUT_COLUMNS", "AugmentBatch", "ChunkAugmenter", "epoch_chunks", "rows_from_batch", "stack_rows"]

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


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]], imgsz: int, mask_ratio: int = MASK_RATIO, *,
               images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Formatted sample rows -> one column batch (``labels`` as float32 bytes, see module doc).
    ``images``: the rows' images already stacked (:func:`cocoseg.data.augment.augment_chunk`'s ``out``)."""
    b = len(rows)
    if b == 0:
        s, m = imgsz, imgsz // mask_ratio
        return {"image": np.zeros((0, s, s, 3), np.uint8), "masks": np.zeros((0, m, m), np.uint8),
                "labels": np.zeros(0, object), "image_id": np.zeros(0, np.int64),
                "orig_hw": np.zeros((0, 2), np.int32), "letterbox": np.zeros((0, LETTERBOX_WIDTH), np.float64)}
    labels = np.empty(b, dtype=object)
    labels[:] = [np.ascontiguousarray(r["labels"], np.float32).tobytes() for r in rows]
    return {
        "image": images if images is not None else np.stack([r["image"] for r in rows]),
        "masks": np.stack([r["masks"] for r in rows]),
        "labels": labels,
        "image_id": np.asarray([r["image_id"] for r in rows], np.int64),
        "orig_hw": np.stack([r["orig_hw"] for r in rows]),
        "letterbox": np.stack([r["letterbox"] for r in rows]),
    }


def epoch_chunks(shard_rows: Sequence[int], *, seed: int, epoch: int, rank: int, world: int,
                 chunk_rows: int, limit: int = 0, shuffle: bool = True,
                 runs_per_chunk: int = 4, repeats: Sequence[np.ndarray] | None = None) -> list[list[tuple[int, int, int]]]:
    """This worker's chunks of one epoch: lists of ``(shard index, first row, end row)`` runs.

    The split's rows in snapshot order (the first ``limit`` only, when > 0) are cut into one run
    per shard; the shard order is permuted by (seed, epoch) when ``shuffle``; the concatenation
    is split into ``world`` equal contiguous parts (the ``len % world`` last rows are dropped, as
    an equal split must). Without ``shuffle`` this ``rank``'s part is cut into chunks of
    ``chunk_rows`` consecutive rows (the last one shorter). With it, the part is first cut into
    pieces of ``chunk_rows // runs_per_chunk`` consecutive rows (at least 1; the cut starts at a
    random offset, so which rows share a piece changes too), the pieces are permuted, and each
    chunk takes ``chunk_rows`` rows of pieces in that order: a chunk (one actor call, the rows that
    mosaic draws partners from, most of one batch) holds about ``runs_per_chunk`` short runs from
    anywhere in the part, different every epoch, while each run still reads one or two row groups
    (``data.chunk_runs``; four runs read a split of ~6-image row groups ~2.7x per epoch, one run
    1.25x). Whole chunks of consecutive rows used to repeat as the same batches, in the same
    order, every epoch of a one-shard split. The same arguments give the same chunks, on any
    machine; every kept row is in exactly one chunk of exactly one rank.

    ``repeats`` (per shard, (rows,) repeat factors >= 1; ``data.repeat_factor_threshold``) adds
    this epoch's extra copies of rare-class images to the plan before it is split between the ranks
    (:func:`cocoseg.data.repeat_factor.with_repeats`); each copy, like each row, goes to one rank.
    """
    if world < 1 or not 0 <= rank < world or chunk_rows < 1:
        raise ValueError(f"epoch_chunks: need 0 <= rank < world and chunk_rows >= 1 (got rank={rank}, "
                         f"world={world}, chunk_rows={chunk_rows})")
    runs, left = [], limit if limit > 0 else sum(shard_rows)
    for index, rows in enumerate(shard_rows):
        take = min(int(rows), left)
        if take > 0:
            runs.append((index, 0, take))
        left -= take
    if shuffle:
        order = np.random.default_rng(np.random.SeedSequence([seed & _MASK63, epoch & _MASK63, _PLAN_TAG]))
        runs = [runs[int(i)] for i in order.permutation(len(runs))]
    if repeats is not None:
        runs = with_repeats(runs, repeats, seed=seed, epoch=epoch)
    per = sum(b - a for _, a, b in runs) // world
    if not shuffle or runs_per_chunk == 1:
        return _cut(runs, rank * per, (rank + 1) * per, chunk_rows)
    rng = np.random.default_rng(np.random.SeedSequence([seed & _MASK63, epoch & _MASK63, rank, _PIECE_TAG]))
    piece = max(1, chunk_rows // runs_per_chunk)
    start = rank * per + int(rng.integers(piece))
    pieces = _cut(runs, rank * per, start, piece) + _cut(runs, start, (rank + 1) * per, piece)
    mixed = [run for k in rng.permutation(len(pieces)) for run in pieces[int(k)]]
    return _cut(mixed, 0, per, chunk_rows)


_MASK63 = (1 << 63) - 1
_PLAN_TAG = 0x706C616E  # "plan": the file-order stream, apart from the per-image ones
_PIECE_TAG = 0x70636573  # "pces": the order of a rank's pieces


def _cut(runs: Sequence[tuple[int, int, int]], lo: int, hi: int, size: int) -> list[list[tuple[int, int, int]]]:
    """Rows [lo, hi) of the concatenated ``runs``, as chunks of ``size`` rows (lists of runs)."""
    chunks: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    filled, pos = 0, 0
    for shard, a, b in runs:
        start, stop = max(a, a + lo - pos), min(b, a + hi - pos)
        pos += b - a
        while start < stop:
            take = min(stop - start, size - filled)
            current.append((shard, start, start + take))
            filled, start = filled + take, start + take
            if filled == size:
                chunks.append(current)
                current, filled = [], 0
    if current:
        chunks.append(current)
    return chunks


class AugmentBatch:
    """``map_batches`` / actor callable: decode + augment + format a chunk of snapshot rows.

    Args (keywords): ``preset`` name (:data:`cocoseg.data.augment.PRESETS`), ``imgsz`` output side
    (multiple of 32), ``seed`` and ``epoch`` (with the image id they seed each image, see
    :func:`cocoseg.data.augment.augment_chunk`; mosaic partners come from the same call's rows),
    ``num_classes``, ``num_points`` per resampled polygon, ``mask_ratio`` the overlap maps'
    downscale (``train.mask_ratio``). Holds no state between calls.
    """

    def __init__(self, *, preset: str, imgsz: int, seed: int = 0, epoch: int = 0,
                 num_classes: int = 80, num_points: int = NUM_POINTS, mask_ratio: int = MASK_RATIO):
        self.preset = get_preset(preset)
        self.imgsz = int(imgsz)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.num_classes = num_classes
        self.num_points = num_points
        self.mask_ratio = int(mask_ratio)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        rows = rows_from_batch(batch)
        p = self.preset
        # the images are made in place in the output column (a preset that mosaics without an affine
        # makes 2 x imgsz canvases and keeps the stacking)
        out = None if (p.mosaic > 0 and not p.affine) or not rows else \
            np.empty((len(rows), self.imgsz, self.imgsz, 3), np.uint8)
        samples = augment_chunk(rows, preset=p, imgsz=self.imgsz, seed=self.seed, epoch=self.epoch,
                                num_classes=self.num_classes, num_points=self.num_points, out=out)
        return stack_rows([format_sample(s, self.mask_ratio) for s in samples], self.imgsz, self.mask_ratio,
                          images=out)


class ChunkAugmenter:
    """One input actor's work (``cocoseg.data.train_input`` runs it as a Ray actor; plain Python here): read
    the rows of a chunk from the snapshot shards and augment them.

    Reads only the row groups that hold a chunk's rows (ingest writes them ~1 MB each) and keeps
    the last ``cached_groups`` of them, so consecutive chunks of one group cost one read. It used
    to read whole shards (up to ``ingest.shard_bytes``, 256 MB) and keep two: with chunks dealt
    round-robin over A actors every actor read every shard, A times the split per epoch from S3,
    and held 2 shards of memory. Holds nothing else, so a restarted actor gives the same output.
    """

    def __init__(self, *, imgsz: int, num_classes: int, cached_groups: int = 4, mask_ratio: int = MASK_RATIO):
        self.imgsz, self.num_classes, self.mask_ratio = imgsz, num_classes, mask_ratio
        self.cached_groups = cached_groups
        self._files: OrderedDict[str, tuple[Any, list[int]]] = OrderedDict()  # uri -> (ParquetFile, group starts)
        self._groups: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self.bytes_read = 0  # encoded bytes of the row groups read (for benchmarks and tests)

    def ready(self) -> bool:
        return True

    def _file(self, uri: str) -> tuple[Any, list[int]]:
        if uri not in self._files:
            fs, path = storage.filesystem(uri)
            parquet = pq.ParquetFile(fs.open_input_file(path))
            starts = [0]
            for g in range(parquet.metadata.num_row_groups):
                starts.append(starts[-1] + parquet.metadata.row_group(g).num_rows)
            self._files[uri] = (parquet, starts)
            while len(self._files) > self.cached_groups:
                self._files.popitem(last=False)
        self._files.move_to_end(uri)
        return self._files[uri]

    def _group(self, uri: str, index: int):
        key = (uri, index)
        if key not in self._groups:
            parquet, _ = self._file(uri)
            self._groups[key] = parquet.read_row_group(index, columns=list(INPUT_COLUMNS))
            self.bytes_read += parquet.metadata.row_group(index).total_byte_size
            while len(self._groups) > self.cached_groups:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key]

    def rows(self, uri: str, first: int, end: int) -> list[dict[str, Any]]:
        """Rows ``[first, end)`` of one shard as row dicts (the :data:`INPUT_COLUMNS`)."""
        _, starts = self._file(uri)
        out: list[dict[str, Any]] = []
        for g in range(len(starts) - 1):
            lo, hi = max(first, starts[g]), min(end, starts[g + 1])
            if lo < hi:
                out += self._group(uri, g).slice(lo - starts[g], hi - lo).to_pylist()
        return out

    def chunk(self, runs: list[tuple[str, int, int]], preset: str, seed: int, epoch: int) -> dict[str, np.ndarray]:
        """Rows ``runs`` [(shard uri, first row, end row)] -> the stage's output columns."""
        rows = []
        for uri, a, b in runs:
            rows += self.rows(uri, a, b)
        stage = AugmentBatch(preset=preset, imgsz=self.imgsz, seed=seed, epoch=epoch, num_classes=self.num_classes,
                             mask_ratio=self.mask_ratio)
        return stage(rows)
