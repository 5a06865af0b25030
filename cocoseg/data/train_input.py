"""Input stage: snapshot shards -> augmented, model-ready batches on each train worker.

Decode and augmentation run in a pool of long-lived Ray actors on CPU (any node with CPUs,
GPU-less ones included), started once per run by the driver and kept across epochs; the train
worker only plans, collects and collates:

    inputs = TrainInput.start(shards, augment="yolov8", epochs=100, close_mosaic=10, imgsz=640, seed=0)
    trainer = TorchTrainer(..., train_loop_config={..., "input": inputs})
    # in the worker (cocoseg/engine/worker.py):
    stream = inputs.for_worker(rank, world)
    for epoch in ...:
        for rows in stream.epoch(epoch, batch_size=16):   # numpy columns, see cocoseg.data.stage
            tb = collate(rows)

Why not Ray Data: a Ray Data execution starts its own actor pool, and Ray 2.60 has no way to keep
one across executions (ray-project/ray#46479, open), so each epoch paid 3-18 s before its first
batch here. ``streaming_split(equal=True)`` over all epochs at once would keep the actors but not
the epoch boundaries per worker. This pool keeps actors and prefetch running across epochs, and
makes the stream reproducible: which rows form which chunk on which worker is planned from (seed,
epoch) alone (:func:`cocoseg.data.stage.epoch_chunks`) and each chunk's output depends on its rows,
seed and epoch only (:func:`cocoseg.data.augment.augment_chunk`), never on the actor that ran it.
The close-mosaic switch is per epoch: :func:`cocoseg.data.augment.preset_for_epoch`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from cocoseg.data.augment import get_preset, preset_for_epoch
from cocoseg.data.instances import MASK_RATIO
from cocoseg.data.plan_position import PlanPosition, resume_chunks
from cocoseg.data.stage import ChunkAugmenter, epoch_chunks

__all__ = ["EpochStream", "TrainInput", "inflight_per_worker"]


# ---------------------------------------------------------------------------------------------
# The persistent augmentation pool


@dataclass(frozen=True)
class TrainInput:
    """What the driver hands every train worker: the actor pool and the epoch plan's inputs.

    ``shards`` [(uri, rows)] in snapshot order; ``augment``/``epochs``/``close_mosaic`` pick each
    epoch's preset through ``preset_for_epoch``; ``chunk_rows`` rows per actor call, in ``chunk_runs`` runs; ``limit``
    keeps the first N rows of the split (0: all); ``prefetch`` chunks in flight per actor (over
    all workers, see :func:`inflight_per_worker`). Picklable (actor handles travel in ``train_loop_config``).
    """

    actors: tuple[Any, ...]
    shards: tuple[tuple[str, int], ...]
    augment: str
    epochs: int
    close_mosaic: int
    seed: int = 0
    chunk_rows: int = 16
    chunk_runs: int = 4
    limit: int = 0
    shuffle: bool = True
    prefetch: int = 2
    repeats: tuple[np.ndarray, ...] | None = None  # per shard, rows' repeat factors (data.repeat_factor_threshold)

    @classmethod
    def start(cls, shards: Sequence[tuple[str, int]], *, augment: str, epochs: int, close_mosaic: int,
              imgsz: int, num_classes: int = 80, seed: int = 0, actors: int = 2, cpus_per_actor: float = 1.0,
              chunk_rows: int = 16, limit: int = 0, shuffle: bool = True, prefetch: int = 2,
              mask_ratio: int = MASK_RATIO, chunk_runs: int = 4, wait: bool = False,
              repeats: Sequence[np.ndarray] | None = None) -> TrainInput:
        """Start ``actors`` input actors (``cpus_per_actor`` logical CPUs each, any node; restarted
        if they die, which is safe: they hold only a read cache). They boot while the caller goes
        on (the train workers starting, say); ``wait`` blocks until they are up."""
        get_preset(augment)
        remote = ray.remote(num_cpus=cpus_per_actor, max_restarts=-1, max_task_retries=3)(ChunkAugmenter)
        pool = tuple(remote.remote(imgsz=imgsz, num_classes=num_classes, mask_ratio=mask_ratio) for _ in range(actors))
        if wait:
            ray.get([a.ready.remote() for a in pool])
        return cls(actors=pool, shards=tuple((str(u), int(n)) for u, n in shards), augment=augment, epochs=epochs,
                   close_mosaic=close_mosaic, seed=seed, chunk_rows=chunk_rows, chunk_runs=chunk_runs, limit=limit, shuffle=shuffle,
                   prefetch=prefetch, repeats=tuple(repeats) if repeats is not None else None)

    def stop(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def images_per_worker(self, world: int) -> int:
        total = min(sum(n for _, n in self.shards), self.limit or 1 << 62)
        return total // world

    def preset(self, epoch: int) -> str:
        return preset_for_epoch(self.augment, epoch, self.epochs, self.close_mosaic)

    def for_worker(self, rank: int, world: int) -> EpochStream:
        return EpochStream(self, rank, world)


def inflight_per_worker(prefetch: int, actors: int, world: int) -> int:
    """Chunks one worker keeps in flight: ``prefetch`` per actor of its share of the pool.

    All workers together then keep about ``prefetch x actors`` chunks queued or done-but-unread, so
    each actor's node holds about ``prefetch`` chunks per actor in its object store (16 rows at 640
    px: ~20 MB each), whatever the number of workers. (Each worker used to keep ``prefetch x
    actors``: ``world`` times that, 8 GPUs x 96 actors of yolov8n -> ~32 GB of object store.)
    """
    return prefetch * max(1, math.ceil(actors / world))


class EpochStream:
    """One worker's stream of epochs: chunks planned by ``epoch_chunks``, sent round-robin to the
    actors (each worker starting at its own part of the pool), up to
    :func:`inflight_per_worker` in flight. Submission runs on past the end of an epoch
    into the next one, so its first batch is already being made while this worker validates and
    checkpoints."""

    def __init__(self, spec: TrainInput, rank: int, world: int):
        self.spec, self.rank, self.world = spec, rank, world
        self._inflight: deque[tuple[int, Any]] = deque()  # (epoch, ObjectRef of one chunk)
        self._plan: Iterator[tuple[int, list[tuple[str, int, int]]]] = iter(())
        self._next_epoch = -1  # the epoch the in-flight queue starts with (-1: unknown, replan)
        self._sent = 0
        self._skip = 0  # rows to drop from the next chunk's output (a resume inside an epoch)
        self.epochs = spec.epochs  # the run's epochs as planned now (train.time_budget_h: see replan)
        self.presets: dict[int, str] = {}  # {epoch: the preset its chunks were sent with}

    def _chunks(self, epoch: int, rank: int, world: int) -> list[list[tuple[int, int, int]]]:
        s = self.spec
        return epoch_chunks([n for _, n in s.shards], seed=s.seed, epoch=epoch, rank=rank, world=world,
                            chunk_rows=s.chunk_rows, limit=s.limit, shuffle=s.shuffle, runs_per_chunk=s.chunk_runs,
                            repeats=s.repeats)

    def _tasks(self, first: int, position: PlanPosition | None = None) -> Iterator[tuple[int, list[tuple[str, int, int]]]]:
        s = self.spec
        epoch = first - 1
        while epoch + 1 < self.epochs:  # read each time: a replan may move the end
            epoch += 1
            chunks = self._chunks(epoch, self.rank, self.world)
            if position is not None and position.epoch == epoch:  # the rest of an interrupted epoch
                chunks, self._skip = resume_chunks(lambda r, w, e=epoch: self._chunks(e, r, w), position,
                                                   self.rank, self.world, s.chunk_rows)
            for chunk in chunks:
                yield epoch, [(s.shards[i][0], a, b) for i, a, b in chunk]

    def _top_up(self) -> None:
        s = self.spec
        share = max(1, math.ceil(len(s.actors) / self.world))
        while len(self._inflight) < inflight_per_worker(s.prefetch, len(s.actors), self.world):
            task = next(self._plan, None)
            if task is None:
                return
            epoch, runs = task
            actor = s.actors[(self._sent + self.rank * share) % len(s.actors)]
            self.presets[epoch] = self.preset(epoch)
            self._inflight.append((epoch, actor.chunk.remote(runs, self.presets[epoch], s.seed, epoch)))
            self._sent += 1

    def preset(self, epoch: int) -> str:
        return preset_for_epoch(self.spec.augment, epoch, self.epochs, self.spec.close_mosaic)

    def replan(self, epochs: int) -> None:
        """The run now trains ``epochs`` in all (``train.time_budget_h``, between epochs). When that
        changes, the chunks already sent ahead (their preset may be the old close-mosaic window's)
        are dropped and the next :meth:`epoch` plans again."""
        if epochs != self.epochs:
            self.epochs = epochs
            self._inflight.clear()
            self._next_epoch = -1

    def epoch(self, epoch: int, *, batch_size: int,
              position: PlanPosition | None = None) -> Iterator[dict[str, np.ndarray]]:
        """This worker's rows of ``epoch`` in batches of ``batch_size`` (the last one shorter);
        with a mid-epoch ``position`` (a resume), only the rows not yet trained
        (:func:`cocoseg.data.plan_position.resume_chunks`)."""
        if epoch != self._next_epoch or position is not None:  # first call, a resume, or an epoch abandoned midway
            self._inflight.clear()
            self._skip = 0
            self._plan = self._tasks(epoch, position)
        self._next_epoch = -1  # until this epoch has been delivered in full
        carry: list[dict[str, np.ndarray]] = []
        have = 0
        while True:
            self._top_up()
            if not self._inflight or self._inflight[0][0] != epoch:
                break
            part = ray.get(self._inflight.popleft()[1])
            if self._skip:  # trained before the checkpoint this run resumed from
                part, self._skip = {c: v[self._skip:] for c, v in part.items()}, 0
            carry.append(part)
            have += len(part["image_id"])
            while have >= batch_size:
                batch, carry = _take(carry, batch_size)
                have -= batch_size
                yield batch
        if have:
            yield _take(carry, have)[0]
        self._next_epoch = epoch + 1


def _take(parts: list[dict[str, np.ndarray]], n: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """The first ``n`` rows of the column batches ``parts`` (one new writable batch), and the rest."""
    out, rest, need = [], [], n
    for part in parts:
        k = len(part["image_id"])
        if need <= 0:
            rest.append(part)
        elif k <= need:
            out.append(part)
            need -= k
        else:
            out.append({c: v[:need] for c, v in part.items()})
            rest.append({c: v[need:] for c, v in part.items()})
            need = 0
    return {c: np.concatenate([p[c] for p in out]) for c in out[0]}, rest
