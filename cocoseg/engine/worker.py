"""The one Ray adapter: ``train_loop_per_worker`` for ``ray.train.torch.TorchTrainer``.

Everything Ray-specific of a worker lives here, around the plain-PyTorch loop of ``loop.py``:

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
Train's preemption notice; on one, :func:`_save_mid_epoch` writes a just-in-time checkpoint
(``checkpoint_epoch-<epoch>-ni-<ni>``) and a resume continues inside that epoch.

Rank 0 logs metrics through the logger the driver injected (``cocoseg.tracking.RunLogger``)
*before* the checkpoint commits (blocking validation; asynchronous: the epoch is staged before
the commit and logged when its validation arrives), so a committed epoch is always logged and a
redone one is not logged twice (the logger skips steps MLflow has); it publishes ``weights/last``
(and, blocking, ``weights/best``) *after* the commit (copies of committed checkpoints; a resume
repairs a copy cut short). ``tracking/epoch_timing.jsonl``: rank 0's training and blocked
seconds per epoch.
Every worker writes ``workers/attempt-<start epoch>-rank<r>-<pid>-<ns>.json`` (pid, node id,
device) into the run folder: one record per worker per attempt, never overwritten.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.collective
import ray.train.torch
import torch
from ray.train import CheckpointUploadMode

from cocoseg import storage
from cocoseg.config import JobConfig, to_dict
from cocoseg.data.schema import snapshot_to_coco
from cocoseg.engine import build, spot
from cocoseg.engine.allocator import retain_freed_memory
from cocoseg.engine.budget import BUDGET_FILE, TimeBudget, end_reserve_s, replan_fn, replan_schedule
from cocoseg.engine.checkpoint import (
    CHECKPOINT_PREFIX,
    CheckpointError,
    check_complete,
    latest_complete,
    load_train_state,
    publish,
    restore_training,
    save_checkpoint,
    snapshot_training,
    sweep_incomplete,
    upload,
    write_snapshot,
)
from cocoseg.engine.loop import EpochResult, LoopState, fit, validation_due
from cocoseg.engine.stopping import STOP_FILE, should_stop_fn
from cocoseg.engine.validation import FITNESS_KEY as VAL_FITNESS_KEY
from cocoseg.engine.validation import Validations
from cocoseg.tracking.ui import CURVES_FILE
from cocoseg.utils import get_logger, verbose

__all__ = ["FITNESS_KEY", "train_loop_per_worker"]

# Reported with every epoch for Ray's CheckpointConfig(checkpoint_score_attribute=...): val mask
# AP50-95 where the epoch was validated, -1 (ranked last) where it was not (train.val_every).
FITNESS_KEY = "fitness"

log = get_logger(__name__)


def _record_attempt(run_dir: str, start_epoch: int, rank: int, world: int, device: torch.device) -> None:
    info = {"rank": rank, "world_size": world, "start_epoch": start_epoch, "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "device": str(device), "time": time.time()}
    # pid + nanoseconds: a restarted group that starts at the same epoch adds records, never replaces
    name = f"attempt-{start_epoch:04d}-rank{rank}-{os.getpid()}-{time.time_ns()}.json"
    storage.write_json(storage.join(run_dir, "workers", name), info)


def _choose_checkpoint(run_dir: str, rank: int, world: int) -> str:
    """Rank 0: sweep interrupted writes, pick the newest complete checkpoint; all ranks: its URI."""
    choice = ""
    if rank == 0:
        for uri in sweep_incomplete(run_dir):
            log.warning("removed %s: an interrupted checkpoint write (no complete commit marker)", uri)
        found = latest_complete(run_dir)
        registered = ray.train.get_checkpoint()
        if found is not None:
            choice = found[0]
            if registered is None or not registered.path.rstrip("/").endswith(found[0].rstrip("/").rsplit("/", 1)[-1]):
                log.info("resuming from %s (complete, newer than Ray's registered %s)", found[0],
                         registered.path if registered else "none")
    if world > 1:  # Ray Train's own collective (its sync actor): no device or backend involved
        choice = ray.train.collective.broadcast_from_rank_zero(choice)
    return choice


def _resume(parts, state: LoopState, run_dir: str, rank: int, world: int) -> tuple[LoopState, str]:
    """Load the run's newest complete checkpoint, if any, into ``parts``; returns the new state."""
    uri = _choose_checkpoint(run_dir, rank, world)
    if not uri:
        return state, ""
    with storage.local_copy(uri) as folder:
        saved = load_train_state(folder)
        if rank == 0 and not saved.get("mid_epoch"):  # weights/* hold epoch ends only
            _repair_weights(run_dir, str(folder), check_complete(folder))
    restore_training(saved, model=parts.model, ema=parts.ema, optimizer=parts.optimizer, scaler=parts.scaler)
    resumed = LoopState(epoch=saved["epoch"] + 1, ni=saved["ni"], last_step_ni=saved["last_step_ni"],
                        best_fitness=saved["best_fitness"], time_spent_s=float(saved.get("time_spent_s", 0.0)))
    spot.resume_inside_epoch(saved, resumed, rank, world)  # a just-in-time checkpoint: mid-epoch
    return resumed, str(saved.get("mlflow_run_id", ""))


def _repair_weights(run_dir: str, folder: str, marker: dict[str, Any]) -> None:
    """A kill between a checkpoint's commit and its publish leaves weights/{last,best} behind it
    (or cut short): publish them again from the checkpoint the run resumes from."""
    targets = ["last"] + (["best"] if marker.get("is_best") else [])
    for name in targets:
        dest = storage.join(run_dir, "weights", name)
        try:
            if check_complete(dest).get("epoch") == marker.get("epoch"):
                continue
        except CheckpointError:
            pass
        log.info("publishing %s again from the checkpoint of epoch %s", dest, marker.get("epoch"))
        publish(folder, dest)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train on this worker. ``loop_config``: ``job`` (the resolved, frozen :class:`JobConfig`),
    ``run`` (:class:`~cocoseg.engine.build.RunInfo`: what the driver resolved for the run), ``input``
    (the driver's ``TrainInput``: ``for_worker(rank, world).epoch(e, batch_size=...)``) and
    ``make_logger``, a picklable factory of the rank-0 metric logger (``log_epoch(step,
    metrics)``, ``close()``): tracking sits beside the engine in the layering, so the driver
    injects it rather than the engine importing it."""
    cfg: JobConfig = loop_config["job"]
    run: build.RunInfo = loop_config["run"]
    if not verbose():  # Ray Train's "Reporting training result N: TrainingReport(...)" per epoch
        logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)
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
    state, _ = _resume(parts, LoopState(), run.run_dir, rank, world)
    _record_attempt(run.run_dir, state.epoch, rank, world, device)
    if state.epoch:
        log.info("rank %d resumed from the checkpoint of epoch %d", rank, state.epoch - 1)

    # The driver's persistent input actors (cocoseg.data.train_input.TrainInput), kept across epochs; the
    # stream picks each epoch's preset (close-mosaic) and this rank's rows of it.
    stream = loop_config["input"].for_worker(rank, world)
    collate = build.build_train_collate(cfg)
    # spot GPUs and stuck ranks (engine/spot.py): the heartbeat + hang watchdog, the preemption poll
    guard = spot.Guard.start(cfg, run=run, state=state, rank=rank, world=world,
                             save=functools.partial(_save_mid_epoch, cfg, run, parts, rank, world))

    def train_batches(epoch: int):
        for rows in guard.epoch_rows(stream, epoch, cfg.train.batch_size, state):
            yield collate(rows)

    validate = validations = logger = None
    if rank == 0:
        logger = loop_config["make_logger"]()  # a tracking.RunLogger, built by the driver's factory
        if cfg.validation.mode == "async":  # a Ray task per due epoch (engine/validation.py)
            validations = Validations(cfg, run, log_epoch=logger.log_epoch, on_result=functools.partial(_write_plots, run),
                                      logged={r["step"]: r["metrics"] for r in logger.records})
            validations.resume(state.epoch)
        else:  # in-process between epochs: every rank waits (the before/after benchmark's baseline)
            val_batches = build.build_val_batches(cfg, run.snapshot_uri)
            validate = build.build_validator(cfg, val_batches, device=device,
                                             coco_gt=snapshot_to_coco(run.snapshot_uri, "val"),
                                             category_ids=run.category_ids, class_names=run.class_names)
    timing = _Timing(run.run_dir) if rank == 0 else None
    # rank 0: {epoch: validated fitness}, from earlier attempts' records and this one's results
    validated = {r["step"]: r["metrics"][VAL_FITNESS_KEY] for r in logger.records
               if VAL_FITNESS_KEY in r["metrics"]} if logger is not None else {}

    planned = [cfg.train.epochs]  # the run's epochs as planned now (train.time_budget_h: engine/budget.py)
    budget = _budget(cfg, run, rank, state, loop_config.get("clock"))
    resumed_inside = state.epoch_rows > 0

    def on_epoch_end(result: EpochResult) -> None:
        nonlocal resumed_inside
        guard.epoch_done()
        if rank == 0 and VAL_FITNESS_KEY in result.metrics:  # blocking validation: known now
            validated[result.epoch] = result.metrics[VAL_FITNESS_KEY]
        if budget is not None:  # before the checkpoint: it carries the time spent
            result.state.time_spent_s = budget.epoch_ended(
                result.epoch, preset=stream.presets.get(result.epoch, ""), timed=not resumed_inside,
                validation_s=result.metrics["val/time_s"] if VAL_FITNESS_KEY in result.metrics else None)
            resumed_inside = False
        started = time.perf_counter()
        checkpoint, upload = None, functools.partial(_upload, run, result, None, None)
        if rank == 0:
            checkpoint, snap = _save(cfg, run, parts, result)
            if validations is not None:
                upload, checkpoint = _end_async_epoch(cfg, run, parts, validations, result, checkpoint, snap,
                                                      planned[0])
            else:
                logger.log_epoch(result.epoch, result.metrics)  # before the commit (see the module doc)
                upload = functools.partial(_upload, run, result, None, snap)
        # All ranks report: it is a barrier, and Ray registers rank 0's checkpoint. The upload (and,
        # with async validation, the epoch's stage) runs in Ray's upload thread with scaling.async_upload.
        fitness = result.metrics.get("val/mask_ap50_95", -1.0)
        mode = CheckpointUploadMode.ASYNC if cfg.scaling.async_upload else CheckpointUploadMode.SYNC
        ray.train.report({"epoch": result.epoch, **result.metrics, FITNESS_KEY: fitness}, checkpoint=checkpoint,
                         checkpoint_dir_name=f"{CHECKPOINT_PREFIX}epoch-{result.epoch:04d}",
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=True,
                         checkpoint_upload_fn=upload)
        if timing is not None:
            timing.add(result, time.perf_counter() - started)

    batches = _with_progress(train_batches, run.batches_per_epoch, cfg.train.epochs) if rank == 0 else train_batches
    try:
        fit(parts, epochs=cfg.train.epochs, state=state, train_batches=batches, validate=validate,
            on_epoch_end=on_epoch_end, world_size=world, val_every=cfg.train.val_every, on_step=guard.on_step,
            should_stop=_stopper(cfg, run, rank, world, validated, validations),
            replan=_replanner(cfg, run, budget, parts, stream, validations, planned, world))
        if validations is not None:  # a resume with nothing left to train may still have some running
            validations.wait()
        if budget is not None:
            budget.finish()
            storage.write_json(_budget_uri(run), budget.journal())
    finally:
        guard.stop()
        if validations is not None:
            validations.close()
        if logger is not None:
            logger.close()


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


def _budget(cfg: JobConfig, run: build.RunInfo, rank: int, state: LoopState, clock) -> TimeBudget | None:
    """Rank 0's clock of ``train.time_budget_h`` (None when off or on other ranks), counting on
    from the run's journal or the resumed checkpoint, whichever spent more (engine/budget.py)."""
    if rank != 0 or not cfg.train.time_budget_h:
        return None
    try:
        journal = storage.read_json(_budget_uri(run))
    except (FileNotFoundError, ValueError):
        journal = None
    return TimeBudget.resumed(cfg.train.time_budget_h, cfg.train.epochs, journal, state.time_spent_s,
                              clock=clock or time.monotonic)


def _replanner(cfg: JobConfig, run: build.RunInfo, budget: TimeBudget | None, parts, stream,
               validations: Validations | None, planned: list[int], world: int):
    """``fit``'s ``replan`` for ``train.time_budget_h`` (None when off): rank 0 plans, every rank
    re-derives its LR schedule and its input's close-mosaic window from the number."""
    if not cfg.train.time_budget_h:
        return None
    base = parts.schedule

    def apply(epochs: int) -> None:
        parts.schedule = replan_schedule(base, epochs)
        stream.replan(epochs)
        planned[0] = epochs

    def reserve() -> float:
        if validations is None:  # blocking: the in-process validations measured
            return end_reserve_s(budget.validation_s)
        seconds = [m["val/task_s"] for m in dict(validations.results).values() if "val/task_s" in m]
        return end_reserve_s(seconds, backlog=validations.pending(),
                             concurrency=cfg.validation.concurrency)

    return replan_fn(budget, apply=apply, reserve_s=reserve,
                     write=lambda doc: storage.write_json(_budget_uri(run), doc),
                     broadcast=ray.train.collective.broadcast_from_rank_zero if world > 1 else None)


def _end_async_epoch(cfg: JobConfig, run: build.RunInfo, parts, validations: Validations, result: EpochResult,
                     checkpoint: ray.train.Checkpoint, snap: dict,
                     epochs: int) -> tuple[functools.partial, ray.train.Checkpoint]:
    """Rank 0, asynchronous validation: -> the epoch's upload function (it stages the epoch for
    validation before the commit) and the checkpoint to report. The last epoch is staged here and waited for, and its
    checkpoint written again with the validated metrics: the run ends validated, its report
    (``Result.metrics``) and ``weights/last`` carry them."""
    due = validation_due(result.epoch, epochs, cfg.train.val_every)
    validations.expect(result.epoch)
    if result.epoch + 1 < epochs:
        return functools.partial(_upload, run, result, (validations, due), snap), checkpoint
    write_snapshot(checkpoint.path, snap)
    validations.stage(result.epoch, result.metrics, checkpoint.path if due else None)
    validations.wait()
    result.metrics.update({k: v for k, v in validations.results.get(result.epoch, {}).items() if k.startswith("val/")})
    result.is_best = validations.best_epoch == result.epoch
    result.state.best_fitness = validations.best
    shutil.rmtree(checkpoint.path, ignore_errors=True)
    checkpoint, snap = _save(cfg, run, parts, result)
    return functools.partial(_upload, run, result, None, snap), checkpoint


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


def _save(cfg: JobConfig, run: build.RunInfo, parts, result: EpochResult) -> tuple[ray.train.Checkpoint, dict]:
    """Rank 0: the epoch's checkpoint as an in-memory snapshot and a fresh local folder it will be
    written into by the upload function (off the step with ``scaling.async_upload``; Ray removes the
    folder once uploaded: ``delete_local_checkpoint_after_upload``); -> (local Checkpoint, snapshot)."""
    tmp = Path(tempfile.mkdtemp(prefix="cocoseg-ckpt-"))
    card = build.model_card(cfg, snapshot_id=run.snapshot_id, class_names=run.class_names,
                            metrics=result.metrics, epoch=result.epoch)
    snap = snapshot_training(model=parts.model, ema=parts.ema, optimizer=parts.optimizer,
                             scaler=parts.scaler, epoch=result.epoch, ni=result.state.ni,
                             best_fitness=result.state.best_fitness, config=to_dict(cfg), card=card,
                             mlflow_run_id=run.mlflow_run_id, last_step_ni=result.state.last_step_ni,
                             is_best=result.is_best, time_spent_s=result.state.time_spent_s)
    return ray.train.Checkpoint.from_directory(str(tmp)), snap


def _save_mid_epoch(cfg: JobConfig, run: build.RunInfo, parts, rank: int, world: int, state: LoopState,
                    mid_epoch: dict[str, Any]) -> None:
    """All ranks: a just-in-time checkpoint inside epoch ``state.epoch`` (``engine/spot.py`` builds
    ``mid_epoch``: the plan position, every rank's RNG states), through the epoch-end writer and
    upload (marker last); ``checkpoint_epoch-<e>-ni-<ni>``. Not published to weights/*, not logged."""
    with tempfile.TemporaryDirectory(prefix="cocoseg-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            done = state.epoch - 1  # the last completed epoch, as in every checkpoint
            card = build.model_card(cfg, snapshot_id=run.snapshot_id, class_names=run.class_names, metrics={},
                                    epoch=max(done, 0))
            folder = save_checkpoint(Path(tmp) / "checkpoint", model=parts.model, ema=parts.ema,
                                     optimizer=parts.optimizer, scaler=parts.scaler, epoch=done, ni=state.ni,
                                     best_fitness=state.best_fitness, config=to_dict(cfg), card=card,
                                     mlflow_run_id=run.mlflow_run_id, last_step_ni=state.last_step_ni,
                                     mid_epoch=mid_epoch, time_spent_s=state.time_spent_s)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report({"epoch": state.epoch - 1, spot.MID_EPOCH_KEY: state.ni, FITNESS_KEY: -1.0},
                         checkpoint=checkpoint,
                         checkpoint_dir_name=f"{CHECKPOINT_PREFIX}epoch-{state.epoch:04d}-ni-{state.ni:09d}",
                         checkpoint_upload_fn=functools.partial(_commit, run.run_dir))


def _commit(run_dir: str, checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """``checkpoint_upload_fn``: commit the folder under the run with its marker last (retried on S3)."""
    ray_storage = ray.train.get_context().get_storage()
    path = ray_storage.build_checkpoint_path_from_name(dir_name)
    upload(checkpoint.path, f"s3://{path}" if storage.is_s3(run_dir) else path)
    return ray.train.Checkpoint(path=path, filesystem=ray_storage.storage_filesystem)


def _upload(run: build.RunInfo, result: EpochResult, stage, snap: dict | None, checkpoint: ray.train.Checkpoint,
            dir_name: str) -> ray.train.Checkpoint:
    """``checkpoint_upload_fn`` (rank 0; Ray's upload thread with ``scaling.async_upload``): stage the
    epoch for asynchronous validation when ``stage`` = (validations, due) is given, then commit the
    folder under the run with its marker last (retried on S3), then publish weights/last (best).
    ``snap``: the epoch's snapshot, serialised into the local folder first."""
    if snap is not None:
        write_snapshot(checkpoint.path, snap)
    if stage is not None:
        validations, due = stage
        validations.stage(result.epoch, result.metrics, checkpoint.path if due else None)
    committed = _commit(run.run_dir, checkpoint, dir_name)
    _publish(run, Path(checkpoint.path), result)
    return committed


def _publish(run: build.RunInfo, folder: Path, result: EpochResult) -> None:
    """Rank 0, after the commit: copy the checkpoint to weights/last (and best); the plots."""
    weights = storage.join(run.run_dir, "weights")
    publish(folder, storage.join(weights, "last"))
    if result.is_best:
        publish(folder, storage.join(weights, "best"))
    _write_plots(run, result.epoch, result.metrics, result.preview, result.is_best)


def _write_plots(run: build.RunInfo, epoch: int, metrics: dict[str, float], plots: dict[str, Any] | None,
                 is_best: bool) -> None:
    """The validation preview (the latest and one per validated epoch: its evolution in MLflow) and,
    for the best epoch, its PR curves and confusion matrix."""
    plots = plots or {}
    if plots.get("preview") is not None:
        for name in ("val_predictions.png", f"val_predictions_epoch{epoch:03d}.png"):
            storage.write_bytes(storage.join(run.run_dir, "plots", name), plots["preview"])
    if is_best and plots.get("curves"):
        storage.write_json(storage.join(run.run_dir, "plots", CURVES_FILE), plots["curves"])


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
