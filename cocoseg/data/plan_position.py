"""Where a worker stands inside the seeded epoch plan, and where a resumed worker goes on from.

A checkpoint written mid-epoch (a just-in-time checkpoint on a preemption notice, see
``cocoseg.engine.preemption``) holds a :class:`PlanPosition`: the epoch, the world size it was
planned for and the rows of that epoch every rank has trained. Every rank trains the same number
of rows (``epoch_chunks`` gives each rank an equal part and every rank takes the same batch size),
so one number places all ranks. :func:`resume_chunks` turns it back into what a rank still has
to train: the plan's chunks from the first one not fully trained, and how many rows of that
chunk's output to drop. A chunk's output depends only on its rows, the seed and the epoch
(``cocoseg.data.augment.augment_chunk``), so the rows delivered after the drop are exactly the ones
an uninterrupted run would have trained next: across the interrupted epoch every image is still
trained exactly once per worker split, in the same batches.

When the world size changed (a node lost for good and an elastic group, ``scaling.min_workers``),
the per-rank parts no longer exist: the untrained rows of every old rank are pooled in rank order
and split equally again (the ``len % world`` last rows are dropped, as ``epoch_chunks`` drops them).
Each image is then still trained at most once in the epoch; the chunks differ from an
uninterrupted run (other mosaic partners). This module does not import Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cocoseg.data.stage import _cut

__all__ = ["PlanPosition", "resume_chunks", "split_at"]

Run = tuple[int, int, int]  # (shard index, first row, end row), as in epoch_chunks
Chunk = list[Run]


@dataclass(frozen=True)
class PlanPosition:
    """``rows_done`` rows of epoch ``epoch`` trained on every one of ``world`` ranks."""

    epoch: int
    world: int
    rows_done: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanPosition:
        return cls(epoch=int(d["epoch"]), world=int(d["world"]), rows_done=int(d["rows_done"]))


def _rows(chunk: Sequence[Run]) -> int:
    return sum(b - a for _, a, b in chunk)


def split_at(chunks: Sequence[Chunk], rows_done: int) -> tuple[int, int]:
    """(index of the first chunk not fully trained, rows of it already trained) after
    ``rows_done`` rows of ``chunks``; ``(len(chunks), 0)`` when all were trained."""
    if rows_done < 0:
        raise ValueError(f"rows_done must be >= 0, got {rows_done}")
    left = rows_done
    for i, chunk in enumerate(chunks):
        n = _rows(chunk)
        if left < n:
            return i, left
        left -= n
    if left:
        raise ValueError(f"the plan has {rows_done - left} rows, fewer than the {rows_done} trained")
    return len(chunks), 0


def _drop_rows(chunk: Chunk, k: int) -> Chunk:
    """``chunk`` without its first ``k`` rows."""
    out: Chunk = []
    for shard, a, b in chunk:
        skip = min(k, b - a)
        k -= skip
        if a + skip < b:
            out.append((shard, a + skip, b))
    return out


def resume_chunks(plan: Callable[[int, int], list[Chunk]], position: PlanPosition, rank: int, world: int,
                  chunk_rows: int) -> tuple[list[Chunk], int]:
    """This rank's chunks of ``position.epoch`` still to train and the rows to drop from the
    first chunk's *output* (its first rows were trained before the checkpoint).

    ``plan(rank, world)`` is that epoch's ``epoch_chunks`` for a rank (the caller binds the
    shards, seed, epoch and chunking). Same world: the plan's own chunks from the first one not
    fully trained (bit-identical batches to an uninterrupted run). Another world: the pooled
    rest, re-split (see the module doc), nothing to drop.
    """
    if world == position.world:
        chunks = plan(rank, world)
        first, done = split_at(chunks, position.rows_done)
        return chunks[first:], done
    rest: list[Run] = []
    for old_rank in range(position.world):
        chunks = plan(old_rank, position.world)
        first, done = split_at(chunks, position.rows_done)
        if first < len(chunks):
            rest += _drop_rows(chunks[first], done)
            rest += [run for chunk in chunks[first + 1:] for run in chunk]
    per = sum(b - a for _, a, b in rest) // world
    return _cut(rest, rank * per, (rank + 1) * per, chunk_rows), 0
