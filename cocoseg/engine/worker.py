"""The one Ray adapter: ``train_loop_per_worker`` for ``ray.train.torch.TorchTrainer``.

Everything Ray-specific of a worker lives here and in ``commit.py`` (its checkpoints: which one a
resume takes, the epoch's save, commit and publish), around the plain-PyTorch loop of ``loop.py``:

- rank, world size and device from ``ray.train.get_context()`` / ``ray.train.torch.get_device()``;
- DDP through ``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU: TorchTrainer picks
  the backend from ``use_gpu``);
- input from the driver's pool of input actors (``loop_config["input"]``, a
  ``cocoseg.data.train_input.TrainInput``, kept across epochs): each rank streams its equal part of every
  epoch, in that epoch's preset (close-mosaic included). Validation (``validation.mode``): by
  default a Ray task per due epoch on its staged weights while the workers go on
  (``engine/validation.py``: rank 0 stages, collects and logs); ``blocking``: rank 0 between
  epochs, from the val split read in-process (see ``build_val_batches``), every rank waiting;
- resume from the run's newest *complete* checkpoint (model, EMA, optimiser, scaler, epoch,
  step, RNG): Ray's ``get_checkpoint()`` names the latest *registered* one, but a checkpoint that
  committed just before a worker died is complete and never registered; it is taken too, so an
  epoch whose checkpoint completed is never trained again. Rank 0 decides (and first removes the
  folders of interrupted writes); the others follow its choice (``ray.train.collective``);
- ``ray.train.report`` every epoch on *all* ranks (it is a barrier), with rank 0's checkpoint,
  uploaded by :func:`cocoseg.engine.checkpoint.upload` (``checkpoint_upload_fn``): through
  ``cocoseg.storage`` (S3 retries) and with the commit marker last, where Ray's own copy writes
  the files in any order; in Ray's background upload thread with ``scaling.async_upload``. The
  folder is ``checkpoint_epoch-<epoch>``.

Spot GPUs and stuck ranks (``engine/spot.py``, docs/reliability.md): after every micro-batch a
heartbeat for the hang watchdog and, every ``scaling.preemption_poll_steps`` optimiser steps, Ray
Train's preemption notice; on one, :func:`save_mid_epoch` writes a just-in-time checkpoint
(``checkpoint_epoch-<epoch>-ni-<micro_step>``) and a resume continues inside that epoch.

Rank 0 logs metrics through the logger the driver injected (``cocoseg.tracking.RunLogger``)
*before* the checkpoint commits (blocking validation; asynchronous: the epoch is staged before
the commit and logged when its validation arrives), so a committed epoch is always logged and a
redone one is not logged twice (the logger skips steps MLflow has); it publishes ``weights/last``
(and, blocking, ``weights/best``) *after* the commit (copies of committed checkpoints; a resume
repairs a copy cut short). ``tracking/epoch_timing.jsonl``: rank 0's training and blocked
seconds per epoch.
Every worker writes ``workers/attempt-<start epoch>-rank<r>-<pid>-<ns>.json`` (pid, node id,
device) into the run folder: one record per worker per attempt, never overwritten.
``train.patience`` (``engine/stopping.py``) and ``train.time_budget_h`` (``engine/budget.py``)
are asked at every epoch boundary; rank 0 decides and Ray Train's broadcast tells the others.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import ray.train
import ray.train.collective
import ray.train.torch
import torch
from ray.train import CheckpointUploadMode

from cocoseg import storage
from cocoseg.config import JobConfig
from cocoseg.data.schema import snapshot_to_coco
from cocoseg.engine import build, spot
from cocoseg.engine.allocator import retain_freed_memory
from cocoseg.engine.budget import BUDGET_FILE, TimeBudget, end_reserve_s, replan_fn, replan_schedule
from cocoseg.engine.checkpoint import CHECKPOINT_PREFIX
from cocoseg.engine.commit import (
    FITNESS_KEY,
    end_async_epoch,
    resume_state,
    save_epoch,
    save_mid_epoch,
    upload_epoch,
    write_plots,
)
from cocoseg.engine.loop import EpochResult, LoopState, fit
from cocoseg.engine.stopping import STOP_FILE, should_stop_fn
from cocoseg.engine.validation import FITNESS_KEY as VAL_FITNESS_KEY
from cocoseg.engine.validation import Validations
from cocoseg.utils import get_logger, verbose

__all__ = ["FITNESS_KEY", "train_loop_per_worker"]

log = get_logger(__name__)


def _record_attempt(run_dir: str, start_epoch: int, rank: int, world: int, device: torch.device) -> None:
    group = ray.util.get_current_placement_group()  # Train's group: released by whoever ends the run
    info = {"rank": rank, "world_size": world, "start_epoch": start_epoch, "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "device": str(device), "time": time.time(), "placement_group": group.id.hex() if group else None}
    # pid + nanoseconds: a restarted group that starts at the same epoch adds records, never replaces
    name = f"attempt-{start_epoch:04d}-rank{rank}-{os.getpid()}-{time.time_ns()}.json"
    storage.write_json(storage.join(run_dir, "workers", name), info)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train on this worker. ``loop_config``: ``job`` (the resolved, frozen :class:`JobConfig`),
    ``run`` (:class:`~cocoseg.engine.build.RunInfo`: what the driver resolved for the run), ``input``
    (the driver's ``TrainInput``: ``for_worker(rank, world).epoch(e, batch_size=...)``),
    ``make_logger``, a picklable factory of the rank-0 metric logger (``log_epoch(step,
    metrics)``, ``close()``): tracking sits beside the engine in the layering, so the driver
    injects it rather than the engine importing it; and ``clock`` (None: ``time.monotonic``), the
    clock of ``train.time_budget_h`` (engine/budget.py)."""
    if not verbose():  # Ray Train's "Reporting training result N: TrainingReport(...)" per epoch
        logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)
    attempt = _Attempt.start(loop_config)
    try:
        attempt.train()
    finally:
        attempt.close()


@dataclass
class _Attempt:
    """One worker's objects for one attempt (a worker group's life): the train parts and state,
    its input stream and spot guard and, on rank 0, the logger, the validation (asynchronous
    ``validations`` or in-process ``validate``), the epoch timing and the time budget."""

    cfg: JobConfig
    run: build.RunInfo
    rank: int
    world: int
    parts: Any  # loop.TrainParts
    state: LoopState
    stream: Any  # data.train_input.EpochStream
    guard: spot.Guard
    logger: Any = None
    validations: Validations | None = None
    validate: Any = None
    timing: _Timing | None = None
    budget: TimeBudget | None = None
    validated: dict[int, float] = field(default_factory=dict)  # rank 0: {epoch: validated fitness}
    planned: list[int] = field(default_factory=list)  # [the run's epochs as planned now] (train.time_budget_h)
    resumed_inside: bool = False  # the first epoch continues a mid-epoch checkpoint (not timed whole)
    progress: bool = True  # rank 0 draws the epoch's progress bar (the driver prints to a terminal)

    @classmethod
    def start(cls, loop_config: dict[str, Any]) -> _Attempt:
        cfg: JobConfig = loop_config["job"]
        run: build.RunInfo = loop_config["run"]
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
        torch.set_num_threads(cfg.scaling.threads_per_worker or max(1, math.ceil(cfg.scaling.cpus_per_worker)))
        torch.manual_seed(cfg.train.seed + rank)
        if device.type == "cpu":  # each step's activations reuse the last step's pages (engine/allocator.py)
            retain_freed_memory()
        # channels_last on every device: cuDNN's tensor-core kernels want it, and on a CPU oneDNN runs
        # its convolutions and BatchNorm ~5-12 % faster in it (tests/benchmarks/bench_model.py).
        model = build.build_model(cfg.model).to(memory_format=torch.channels_last)
        model = ray.train.torch.prepare_model(model)
        parts = build.build_train_parts(cfg, model=model, device=device, world_size=world,
                                        batches_per_epoch=run.batches_per_epoch, choice=run.recipe)
        state, _ = resume_state(parts, LoopState(), run.run_dir, rank, world)
        _record_attempt(run.run_dir, state.epoch, rank, world, device)
        if state.epoch:
            log.info("rank %d resumed from the checkpoint of epoch %d", rank, state.epoch - 1)
        # The driver's persistent input actors (cocoseg.data.train_input.TrainInput), kept across epochs;
        # the stream picks each epoch's preset (close-mosaic) and this rank's rows of it.
        stream = loop_config["input"].for_worker(rank, world)
        # spot GPUs and stuck ranks (engine/spot.py): the heartbeat + hang watchdog, the preemption poll
        guard = spot.Guard.start(cfg, run=run, state=state, rank=rank, world=world,
                                 save=functools.partial(save_mid_epoch, cfg, run, parts, rank, world))
        attempt = cls(cfg=cfg, run=run, rank=rank, world=world, parts=parts, state=state, stream=stream,
                      guard=guard, planned=[cfg.train.epochs], resumed_inside=state.epoch_rows > 0,
                      progress=loop_config.get("progress", True))
        if rank == 0:
            attempt._start_rank0(loop_config, device)
        return attempt

    def _start_rank0(self, loop_config: dict[str, Any], device: torch.device) -> None:
        cfg, run = self.cfg, self.run
        self.logger = loop_config["make_logger"]()  # a tracking.RunLogger, built by the driver's factory
        records = self.logger.records
        if cfg.validation.mode == "async":  # a Ray task per due epoch (engine/validation.py)
            self.validations = Validations(cfg, run, log_epoch=self.logger.log_epoch,
                                           on_result=functools.partial(write_plots, run),
                                           logged={r["step"]: r["metrics"] for r in records})
            self.validations.resume(self.state.epoch)
        else:  # in-process between epochs: every rank waits (the before/after benchmark's baseline)
            self.validate = build.build_validator(cfg, build.build_val_batches(cfg, run.snapshot_uri), device=device,
                                                  coco_gt=snapshot_to_coco(run.snapshot_uri, "val"),
                                                  category_ids=run.category_ids, class_names=run.class_names)
        self.timing = _Timing(run.run_dir)
        # {epoch: validated fitness}, from earlier attempts' records and this one's results
        self.validated = {r["step"]: r["metrics"][VAL_FITNESS_KEY] for r in records if VAL_FITNESS_KEY in r["metrics"]}
        self.budget = _budget(cfg, run, self.state, loop_config.get("clock"))

    def train_batches(self, epoch: int):
        collate = build.build_train_collate(self.cfg)
        for rows in self.guard.epoch_rows(self.stream, epoch, self.cfg.train.batch_size, self.state):
            yield collate(rows)

    def train(self) -> None:
        """The epoch loop (``loop.fit``), then, at the run's end, the validations still running."""
        cfg, rank = self.cfg, self.rank
        batches = self.train_batches
        if rank == 0 and self.progress:
            batches = _with_progress(batches, self.run.batches_per_epoch, cfg.train.epochs)
        fit(self.parts, epochs=cfg.train.epochs, state=self.state, train_batches=batches, validate=self.validate,
            on_epoch_end=self.on_epoch_end, world_size=self.world, val_every=cfg.train.val_every,
            on_step=self.guard.on_step,
            should_stop=_stopper(cfg, self.run, rank, self.world, self.validated, self.validations),
            replan=_replanner(self))
        if self.validations is not None:  # a resume with nothing left to train may still have some running
            self.validations.wait()
        if self.budget is not None:
            self.budget.finish()
            storage.write_json(_budget_uri(self.run), self.budget.journal())

    def on_epoch_end(self, result: EpochResult) -> None:
        """All ranks: the epoch's record, checkpoint and report (see the module doc)."""
        self.guard.epoch_done()
        if self.rank == 0:
            self._note(result)
        started = time.perf_counter()
        checkpoint, upload = None, functools.partial(upload_epoch, self.run, result, None, None)
        if self.rank == 0:
            checkpoint, snap = save_epoch(self.cfg, self.run, self.parts, result)
            if self.validations is not None:
                upload, checkpoint = end_async_epoch(self.cfg, self.run, self.parts, self.validations, result,
                                                     checkpoint, snap, self.planned[0])
            else:
                self.logger.log_epoch(result.epoch, result.metrics)  # before the commit (see the module doc)
                upload = functools.partial(upload_epoch, self.run, result, None, snap)
        # All ranks report: it is a barrier, and Ray registers rank 0's checkpoint. The upload (and,
        # with async validation, the epoch's stage) runs in Ray's upload thread with scaling.async_upload.
        fitness = result.metrics.get(VAL_FITNESS_KEY, -1.0)
        mode = CheckpointUploadMode.ASYNC if self.cfg.scaling.async_upload else CheckpointUploadMode.SYNC
        ray.train.report({"epoch": result.epoch, **result.metrics, FITNESS_KEY: fitness}, checkpoint=checkpoint,
                         checkpoint_dir_name=f"{CHECKPOINT_PREFIX}epoch-{result.epoch:04d}",
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=True,
                         checkpoint_upload_fn=upload)
        if self.timing is not None:
            self.timing.add(result, time.perf_counter() - started)

    def _note(self, result: EpochResult) -> None:
        """Rank 0, before the checkpoint: blocking validation's fitness (known now) and the time the
        budget has spent (the checkpoint carries it)."""
        validated = VAL_FITNESS_KEY in result.metrics
        if validated:
            self.validated[result.epoch] = result.metrics[VAL_FITNESS_KEY]
        if self.budget is not None:
            result.state.time_spent_s = self.budget.epoch_ended(
                result.epoch, preset=self.stream.presets.get(result.epoch, ""), timed=not self.resumed_inside,
                validation_s=result.metrics["val/time_s"] if validated else None)
        self.resumed_inside = False

    def close(self) -> None:
        self.guard.stop()
        if self.validations is not None:
            self.validations.close()
        if self.logger is not None:
            self.logger.close()


def _stopper(cfg: JobConfig, run: build.RunInfo, rank: int, world: int, fitness: dict[int, float],
             validations: Validations | None):
    """``fit``'s ``should_stop`` for ``train.patience`` (engine/stopping.py); asynchronous
    validation: rank 0 decides on the epochs whose results have arrived."""
    def arrived() -> dict[int, float]:
        if validations is not None:
            fitness.update({e: m[VAL_FITNESS_KEY] for e, m in dict(validations.results).items() if VAL_FITNESS_KEY in m})
        return fitness

    def record(stop, last_epoch: int) -> None:
        storage.write_json(storage.join(run.run_dir, "tracking", STOP_FILE), {**stop.as_dict(), "last_trained_epoch": last_epoch})

    return should_stop_fn(cfg.train.patience, cfg.train.epochs, rank=rank, arrived=arrived, on_stop=record,
                          broadcast=ray.train.collective.broadcast_from_rank_zero if world > 1 else None)


def _budget_uri(run: build.RunInfo) -> str:
    return storage.join(run.run_dir, "tracking", BUDGET_FILE)


def _budget(cfg: JobConfig, run: build.RunInfo, state: LoopState, clock) -> TimeBudget | None:
    """Rank 0's clock of ``train.time_budget_h`` (None when off), counting on from the run's
    journal or the resumed checkpoint, whichever spent more (engine/budget.py)."""
    if not cfg.train.time_budget_h:
        return None
    clock = clock or time.monotonic
    try:
        return TimeBudget.resumed(cfg.train.time_budget_h, cfg.train.epochs, storage.read_json(_budget_uri(run)),
                                  state.time_spent_s, clock=clock)
    except FileNotFoundError:  # a fresh run
        pass
    except (ValueError, TypeError, KeyError) as exc:  # torn or foreign: the checkpoint's count goes on
        log.warning("%s is unreadable (%s): the time budget counts on from the checkpoint", _budget_uri(run), exc)
    return TimeBudget.resumed(cfg.train.time_budget_h, cfg.train.epochs, None, state.time_spent_s, clock=clock)


def _replanner(attempt: _Attempt):
    """``fit``'s ``replan`` for ``train.time_budget_h`` (None when off): rank 0 plans, every rank
    re-derives its LR schedule and its input's close-mosaic window from the number."""
    cfg, budget, parts, validations, planned = (attempt.cfg, attempt.budget, attempt.parts, attempt.validations,
                                                attempt.planned)
    if not cfg.train.time_budget_h:
        return None
    base = parts.schedule

    def apply(epochs: int) -> None:
        parts.schedule = replan_schedule(base, epochs)
        attempt.stream.replan(epochs)
        planned[0] = epochs

    def reserve() -> float:
        if validations is None:  # blocking: the in-process validations measured
            return end_reserve_s(budget.validation_s)
        seconds = [m["val/task_s"] for m in dict(validations.results).values() if "val/task_s" in m]
        return end_reserve_s(seconds, backlog=validations.pending(),
                             concurrency=cfg.validation.concurrency)

    return replan_fn(budget, apply=apply, reserve_s=reserve,
                     write=lambda doc: storage.write_json(_budget_uri(attempt.run), doc),
                     broadcast=ray.train.collective.broadcast_from_rank_zero if attempt.world > 1 else None)


def _with_progress(train_batches, total: int, epochs: int):
    """Rank 0's batches of an epoch behind a progress bar. ``tqdm_ray`` draws it on the driver
    (a plain tqdm in a worker would be garbled by Ray's log forwarding)."""
    from ray.experimental import tqdm_ray

    def batches(epoch: int):
        bar = tqdm_ray.tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch")
        try:
            for batch in train_batches(epoch):
                yield batch
                bar.update(1)
        finally:
            bar.close()

    return batches


class _Timing:
    """Rank 0's time per epoch outside training (``tracking/epoch_timing.jsonl``: ``train_s``, the
    epoch's training; ``blocked_s``, validation in-process plus the epoch's end: checkpoint save,
    the report barrier and, with a synchronous upload, the upload). tests/benchmarks/bench_validation.py
    reads it."""

    def __init__(self, run_dir: str):
        self.uri = storage.join(run_dir, "tracking", "epoch_timing.jsonl")
        self.lines: list[str] = []

    def add(self, result: EpochResult, end_s: float) -> None:
        m = result.metrics
        record = {"epoch": result.epoch, "train_s": m.get("train/epoch_time_s", 0.0),
                  "blocked_s": m.get("val/time_s", 0.0) + end_s, "time": time.time()}
        self.lines.append(json.dumps(record) + "\n")
        storage.write_text(self.uri, "".join(self.lines))
