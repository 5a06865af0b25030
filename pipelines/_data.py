"""Ray Data input stage: a snapshot split -> a stream of augmented, model-ready rows.

Decode and augmentation run in Ray Data actors on CPU (any node with CPUs, GPU-less ones
included); the train worker only batches and collates:

    ds = build_train_dataset(shard_paths, preset="yolov8", imgsz=640, seed=cfg.train.seed)
    trainer = TorchTrainer(..., datasets={"train": ds, ...})
    # in the worker (cocoseg/engine/worker.py):
    shard = ray.train.get_dataset_shard("train")
    for tb in iter_collated(shard, batch_size=16):   # TrainBatch, images (B, 3, S, S) uint8
        ...

Close-mosaic is explicit in the epoch loop: pass a second dataset built with the
``"yolov8-close"`` preset (``preset_for_epoch``) and iterate that one for the last K epochs;
a dataset that is never iterated costs nothing.

Mosaic partners come from each actor's bounded buffer of recently decoded images of the same
stream (``buffer_size``), never from random access into the split. File order is shuffled every
epoch (``shuffle=True``); rows inside a file stay in order, mosaic mixes four of them into every
training image, and the consumer can add ``local_shuffle_buffer_size`` to ``iter_batches``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import ray

from cocoseg.data.collate import collate_train
from cocoseg.data.stage import INPUT_COLUMNS, AugmentBatch

__all__ = ["build_train_dataset", "build_val_dataset", "iter_collated"]


def _actors(concurrency: int | tuple[int, int]) -> ray.data.ActorPoolStrategy:
    if isinstance(concurrency, tuple):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    return ray.data.ActorPoolStrategy(size=concurrency)


def _read(paths: str | Sequence[str], rows_per_block: int, filesystem: Any, shuffle: str | None) -> ray.data.Dataset:
    """Read the snapshot columns the stage needs, in blocks of ``rows_per_block`` rows.

    Ray Data packs small files into one read task and big shards into blocks of up to 128 MB of
    encoded images; either way one actor call would then augment hundreds of images before the
    consumer sees any. A streaming repartition to one map batch per block keeps the actors busy in
    parallel and the output flowing batch by batch. ``shuffle="files"`` permutes the file order
    anew each epoch without materialising anything (a block-order shuffle is an all-to-all barrier).
    """
    ctx = ray.data.DataContext.get_current()
    saved = ctx.use_datasource_v2
    # Ray 2.60's DataSourceV2 Parquet path (ListFiles -> ReadFiles) spent 28-45 s of wall time
    # (0.3 s CPU) in its ListFiles task on every execution here, i.e. every epoch, before the
    # first row; the classic reader starts in seconds. read_parquet picks the path when called,
    # so the flag is flipped only around the call.
    ctx.use_datasource_v2 = False
    try:
        ds = ray.data.read_parquet(paths, columns=list(INPUT_COLUMNS), filesystem=filesystem, shuffle=shuffle)
    finally:
        ctx.use_datasource_v2 = saved
    return ds.repartition(target_num_rows_per_block=rows_per_block)


def build_train_dataset(paths: str | Sequence[str], *, preset: str = "yolov8", imgsz: int = 640,
                        seed: int = 0, epoch: int | None = None, batch_size: int = 16,
                        concurrency: int | tuple[int, int] = 2, cpus_per_actor: float = 1.0,
                        buffer_size: int = 64, num_classes: int = 80, shuffle: bool = True,
                        filesystem: Any = None) -> ray.data.Dataset:
    """Lazy Ray Dataset of augmented training rows from snapshot Parquet ``paths``.

    ``batch_size`` is rows per ``map_batches`` call (one actor call: larger amortises Ray's
    per-task overhead, smaller lowers latency and memory); ``concurrency`` the actor pool size
    (int, or (min, max) to autoscale); ``cpus_per_actor`` what each actor reserves: keep at least
    one logical CPU per node free for the Parquet read tasks (see ray-notes.md, CPU pitfall).
    ``epoch=None`` draws fresh randomness per execution, so each epoch differs.
    """
    ds = _read(paths, batch_size, filesystem, shuffle="files" if shuffle else None)
    return ds.map_batches(
        AugmentBatch,
        fn_constructor_kwargs={"preset": preset, "imgsz": imgsz, "seed": seed, "epoch": epoch,
                               "buffer_size": buffer_size, "num_classes": num_classes},
        batch_size=batch_size, batch_format="pyarrow", compute=_actors(concurrency), num_cpus=cpus_per_actor,
    )


def build_val_dataset(paths: str | Sequence[str], *, imgsz: int = 640, batch_size: int = 16,
                      concurrency: int | tuple[int, int] = 1, cpus_per_actor: float = 1.0,
                      num_classes: int = 80, filesystem: Any = None) -> ray.data.Dataset:
    """Lazy Ray Dataset of letterboxed validation rows (``"val"`` preset, deterministic, in order)."""
    ds = _read(paths, batch_size, filesystem, shuffle=None)
    return ds.map_batches(
        AugmentBatch,
        fn_constructor_kwargs={"preset": "val", "imgsz": imgsz, "seed": 0, "epoch": 0,
                               "num_classes": num_classes},
        batch_size=batch_size, batch_format="pyarrow", compute=_actors(concurrency), num_cpus=cpus_per_actor,
    )


def iter_collated(data: ray.data.Dataset | ray.data.DataIterator | Iterable[Any], *, batch_size: int,
                  collate: Callable[[Any], Any] = collate_train, prefetch_batches: int = 2,
                  drop_last: bool = False) -> Iterator[Any]:
    """Iterate a dataset or a train worker's shard as collated batches (TrainBatch by default;
    pass ``collate=collate_val`` for :class:`cocoseg.data.collate.ValBatch`)."""
    for batch in data.iter_batches(batch_size=batch_size, batch_format="numpy",
                                   prefetch_batches=prefetch_batches, drop_last=drop_last):
        yield collate(batch)
