"""A train worker's checkpoints, the Ray side (``worker.py`` drives them; the files are
``checkpoint.py``'s):

- which checkpoint an attempt resumes from (:func:`choose_checkpoint`, :func:`resume_state`):
  the run's newest *complete* one, which may be newer than Ray's registered one (a checkpoint that
  committed just before a worker died is complete and never registered); rank 0 decides (and first
  removes the folders of interrupted writes), the others follow (``ray.train.collective``); a kill
  between a commit and its publish is repaired (``weights/last``/``best`` published again);
- the epoch's checkpoint (:func:`save_epoch`: an in-memory snapshot, written by the upload
  function) and ``ray.train.report``'s ``checkpoint_upload_fn`` (:func:`upload_epoch`): with
  asynchronous validation the epoch's stage first, then the commit under the run with its marker
  last (:func:`commit`, through ``cocoseg.storage``: S3 retries), then ``weights/last`` (and
  ``best``) and the plots; the run's last epoch under asynchronous validation
  (:func:`end_async_epoch`: staged, waited for, written again with its validated metrics);
- the just-in-time checkpoint inside an epoch (:func:`save_mid_epoch`, ``engine/spot.py``).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.collective

from cocoseg import storage
from cocoseg.config import JobConfig, to_dict
from cocoseg.engine import build, spot
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
from cocoseg.engine.loop import EpochResult, LoopState, validation_due
from cocoseg.engine.validation import Validations
from cocoseg.tracking.ui import CURVES_FILE
from cocoseg.utils import get_logger

__all__ = ["FITNESS_KEY", "choose_checkpoint", "commit", "end_async_epoch", "resume_state", "save_epoch", "save_mid_epoch",
           "upload_epoch", "write_plots"]

log = get_logger(__name__)
# Reported with every epoch for Ray's CheckpointConfig(checkpoint_score_attribute=...): val mask
# AP50-95 where the epoch was validated, -1 (ranked last) where it was not (train.val_every).
FITNESS_KEY = "fitness"


def choose_checkpoint(run_dir: str, rank: int, world: int) -> str:
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


def resume_state(parts, state: LoopState, run_dir: str, rank: int, world: int) -> tuple[LoopState, str]:
    """Load the run's newest complete checkpoint, if any, into ``parts``; returns the new state."""
    uri = choose_checkpoint(run_dir, rank, world)
    if not uri:
        return state, ""
    with storage.local_copy(uri) as folder:
        saved = load_train_state(folder)
        if rank == 0 and not saved.get("mid_epoch"):  # weights/* hold epoch ends only
            _repair_weights(run_dir, str(folder), check_complete(folder))
    restore_training(saved, model=parts.model, ema=parts.ema, optimizer=parts.optimizer, scaler=parts.scaler)
    resumed = LoopState(epoch=saved["epoch"] + 1, micro_step=saved["ni"], last_step_at=saved["last_step_ni"],
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


def save_epoch(cfg: JobConfig, run: build.RunInfo, parts, result: EpochResult) -> tuple[ray.train.Checkpoint, dict]:
    """Rank 0: the epoch's checkpoint as an in-memory snapshot and a fresh local folder it will be
    written into by the upload function (off the step with ``scaling.async_upload``; Ray removes the
    folder once uploaded: ``delete_local_checkpoint_after_upload``); -> (local Checkpoint, snapshot)."""
    tmp = Path(tempfile.mkdtemp(prefix="cocoseg-ckpt-"))
    card = build.model_card(cfg, snapshot_id=run.snapshot_id, class_names=run.class_names,
                            metrics=result.metrics, epoch=result.epoch)
    snap = snapshot_training(model=parts.model, ema=parts.ema, optimizer=parts.optimizer,
                             scaler=parts.scaler, epoch=result.epoch, micro_step=result.state.micro_step,
                             best_fitness=result.state.best_fitness, config=to_dict(cfg), card=card,
                             mlflow_run_id=run.mlflow_run_id, last_step_at=result.state.last_step_at,
                             is_best=result.is_best, time_spent_s=result.state.time_spent_s)
    return ray.train.Checkpoint.from_directory(str(tmp)), snap


def save_mid_epoch(cfg: JobConfig, run: build.RunInfo, parts, rank: int, world: int, state: LoopState,
                    mid_epoch: dict[str, Any]) -> None:
    """All ranks: a just-in-time checkpoint inside epoch ``state.epoch`` (``engine/spot.py`` builds
    ``mid_epoch``: the plan position, every rank's RNG states), through the epoch-end writer and
    upload (marker last); ``checkpoint_epoch-<e>-ni-<micro_step>``. Not published to weights/*, not logged."""
    with tempfile.TemporaryDirectory(prefix="cocoseg-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            done = state.epoch - 1  # the last completed epoch, as in every checkpoint
            card = build.model_card(cfg, snapshot_id=run.snapshot_id, class_names=run.class_names, metrics={},
                                    epoch=max(done, 0))
            folder = save_checkpoint(Path(tmp) / "checkpoint", model=parts.model, ema=parts.ema,
                                     optimizer=parts.optimizer, scaler=parts.scaler, epoch=done, micro_step=state.micro_step,
                                     best_fitness=state.best_fitness, config=to_dict(cfg), card=card,
                                     mlflow_run_id=run.mlflow_run_id, last_step_at=state.last_step_at,
                                     mid_epoch=mid_epoch, time_spent_s=state.time_spent_s)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report({"epoch": state.epoch - 1, spot.MID_EPOCH_KEY: state.micro_step, FITNESS_KEY: -1.0},
                         checkpoint=checkpoint,
                         checkpoint_dir_name=f"{CHECKPOINT_PREFIX}epoch-{state.epoch:04d}-ni-{state.micro_step:09d}",
                         checkpoint_upload_fn=functools.partial(commit, run.run_dir))


def end_async_epoch(cfg: JobConfig, run: build.RunInfo, parts, validations: Validations, result: EpochResult,
                     checkpoint: ray.train.Checkpoint, snap: dict,
                     epochs: int) -> tuple[functools.partial, ray.train.Checkpoint]:
    """Rank 0, asynchronous validation: -> the epoch's upload function (it stages the epoch for
    validation before the commit) and the checkpoint to report. The last epoch is staged here and waited for, and its
    checkpoint written again with the validated metrics: the run ends validated, its report
    (``Result.metrics``) and ``weights/last`` carry them."""
    due = validation_due(result.epoch, epochs, cfg.train.val_every)
    validations.expect(result.epoch)
    if result.epoch + 1 < epochs:
        return functools.partial(upload_epoch, run, result, (validations, due), snap), checkpoint
    write_snapshot(checkpoint.path, snap)
    validations.stage(result.epoch, result.metrics, checkpoint.path if due else None)
    validations.wait()
    result.metrics.update({k: v for k, v in validations.results.get(result.epoch, {}).items() if k.startswith("val/")})
    result.is_best = validations.best_epoch == result.epoch
    result.state.best_fitness = validations.best
    shutil.rmtree(checkpoint.path, ignore_errors=True)
    checkpoint, snap = save_epoch(cfg, run, parts, result)
    return functools.partial(upload_epoch, run, result, None, snap), checkpoint


def commit(run_dir: str, checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """``checkpoint_upload_fn``: commit the folder under the run with its marker last (retried on S3)."""
    ray_storage = ray.train.get_context().get_storage()
    path = ray_storage.build_checkpoint_path_from_name(dir_name)
    upload(checkpoint.path, f"s3://{path}" if storage.is_s3(run_dir) else path)
    return ray.train.Checkpoint(path=path, filesystem=ray_storage.storage_filesystem)


def upload_epoch(run: build.RunInfo, result: EpochResult, stage, snap: dict | None, checkpoint: ray.train.Checkpoint,
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
    committed = commit(run.run_dir, checkpoint, dir_name)
    _publish(run, Path(checkpoint.path), result)
    return committed


def _publish(run: build.RunInfo, folder: Path, result: EpochResult) -> None:
    """Rank 0, after the commit: copy the checkpoint to weights/last (and best); the plots."""
    weights = storage.join(run.run_dir, "weights")
    publish(folder, storage.join(weights, "last"))
    if result.is_best:
        publish(folder, storage.join(weights, "best"))
    write_plots(run, result.epoch, result.metrics, result.preview, result.is_best)


def write_plots(run: build.RunInfo, epoch: int, metrics: dict[str, float], plots: dict[str, Any] | None,
                 is_best: bool) -> None:
    """The validation preview (the latest and one per validated epoch: its evolution in MLflow) and,
    for the best epoch, its PR curves and confusion matrix."""
    plots = plots or {}
    if plots.get("preview") is not None:
        for name in ("val_predictions.png", f"val_predictions_epoch{epoch:03d}.png"):
            storage.write_bytes(storage.join(run.run_dir, "plots", name), plots["preview"])
    if is_best and plots.get("curves"):
        storage.write_json(storage.join(run.run_dir, "plots", CURVES_FILE), plots["curves"])

