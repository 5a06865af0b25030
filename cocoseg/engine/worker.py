"""The one Ray adapter: ``train_loop_per_worker`` for ``ray.train.torch.TorchTrainer``.

Everything Ray-specific of a worker lives here, around the plain-PyTorch loop of ``loop.py``:

- rank, world size and device from ``ray.train.get_context()`` / ``ray.train.torch.get_device()``;
- DDP through ``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU: TorchTrainer picks
  the backend from ``use_gpu``);
- input from ``ray.train.get_dataset_shard``: ``train`` (mosaic preset) and ``train_close`` (the
  preset after ``close_mosaic``) are split across workers. Validation runs on rank 0 from the
  val split read in-process (letterbox only, prepared once and kept; see ``build_val_batches``);
- resume from ``ray.train.get_checkpoint()`` (model, EMA, optimiser, scaler, epoch, step, RNG);
- ``ray.train.report`` every epoch on *all* ranks (it is a barrier), with rank 0's checkpoint.

Rank 0 also publishes ``weights/last`` and ``weights/best`` and logs metrics through the
logger the driver injected (``cocoseg.tracking.RunLogger``). Every worker
writes ``workers/attempt-<start epoch>-rank<r>.json`` (pid, node id, device) into the run folder:
a record of where each attempt ran, which the multi-node and fault-tolerance tests read.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from cocoseg import storage
from cocoseg.config import JobConfig, from_dict, to_dict
from cocoseg.data.schema import snapshot_to_coco
from cocoseg.engine import build
from cocoseg.engine.checkpoint import load_train_state, publish, restore_training, save_checkpoint
from cocoseg.engine.loop import EpochResult, LoopState, fit
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
    storage.write_json(storage.join(run_dir, "workers", f"attempt-{start_epoch:04d}-rank{rank}.json"), info)


def _resume(parts, state: LoopState) -> tuple[LoopState, str]:
    """Load Ray's latest registered checkpoint, if any, into ``parts``; returns the new state."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return state, ""
    with checkpoint.as_directory() as folder:
        saved = load_train_state(folder)
    restore_training(saved, model=parts.model, ema=parts.ema, optimizer=parts.optimizer, scaler=parts.scaler)
    resumed = LoopState(epoch=saved["epoch"] + 1, ni=saved["ni"], last_step_ni=saved["last_step_ni"],
                        best_fitness=saved["best_fitness"])
    return resumed, str(saved.get("mlflow_run_id", ""))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train on this worker. ``loop_config``: ``job`` (resolved config dict), ``run`` (run_dir,
    batches_per_epoch, snapshot_id, snapshot_uri, class_names, category_ids, run_id) and
    ``make_logger``, a picklable factory of the rank-0 metric logger (``log_epoch(step,
    metrics)``, ``close()``): tracking sits beside the engine in the layering, so the driver
    injects it rather than the engine importing it."""
    cfg: JobConfig = from_dict(JobConfig, loop_config["job"])
    run = loop_config["run"]
    if not verbose():  # Ray Train's "Reporting training result N: TrainingReport(...)" per epoch
        logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(cfg.train.threads_per_worker or max(1, math.ceil(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed + rank)

    model = build.build_model(cfg.model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    parts = build.build_train_parts(cfg, model=model, device=device, world_size=world,
                                    batches_per_epoch=run["batches_per_epoch"])
    state, _ = _resume(parts, LoopState())
    _record_attempt(run["run_dir"], state.epoch, rank, world, device)
    if state.epoch:
        log.info("rank %d resumed from the checkpoint of epoch %d", rank, state.epoch - 1)

    shards = {name: ray.train.get_dataset_shard(name) for name in ("train", "train_close")}
    close_from = cfg.train.epochs - cfg.train.close_mosaic
    collate = build.build_train_collate(cfg)

    def train_batches(epoch: int):
        shard = shards["train_close" if epoch >= close_from else "train"]
        for rows in shard.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy", prefetch_batches=2):
            yield collate(rows)

    validate = None
    logger = None
    if rank == 0:
        val_batches = build.build_val_batches(cfg, run["snapshot_uri"])
        validate = build.build_validator(cfg, val_batches, device=device, coco_gt=snapshot_to_coco(run["snapshot_uri"], "val"),
                                         category_ids=run["category_ids"], class_names=run["class_names"])
        logger = loop_config["make_logger"]()  # a tracking.RunLogger, built by the driver's factory

    def on_epoch_end(result: EpochResult) -> None:
        with tempfile.TemporaryDirectory(prefix="cocoseg-ckpt-") as tmp:
            checkpoint = None
            if rank == 0:
                checkpoint = _save_and_publish(cfg, run, parts, result, Path(tmp))
                logger.log_epoch(result.epoch, result.metrics)
            # All ranks report: it is a barrier, and Ray registers rank 0's checkpoint.
            fitness = result.metrics.get("val/mask_ap50_95", -1.0)
            ray.train.report({"epoch": result.epoch, **result.metrics, FITNESS_KEY: fitness}, checkpoint=checkpoint)

    batches = _with_progress(train_batches, run["batches_per_epoch"], cfg.train.epochs) if rank == 0 else train_batches
    try:
        fit(parts, epochs=cfg.train.epochs, state=state, train_batches=batches, validate=validate,
            on_epoch_end=on_epoch_end, world_size=world, val_every=cfg.train.val_every)
    finally:
        if logger is not None:
            logger.close()


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


def _save_and_publish(cfg: JobConfig, run: dict[str, Any], parts, result: EpochResult, tmp: Path):
    """Rank 0: write the checkpoint folder, copy it to weights/last (and best), plots; -> Checkpoint."""
    card = build.model_card(cfg, snapshot_id=run["snapshot_id"], class_names=run["class_names"],
                            metrics=result.metrics, epoch=result.epoch)
    folder = save_checkpoint(tmp / "checkpoint", model=parts.model, ema=parts.ema, optimizer=parts.optimizer,
                             scaler=parts.scaler, epoch=result.epoch, ni=result.state.ni,
                             best_fitness=result.state.best_fitness, config=to_dict(cfg), card=card,
                             mlflow_run_id=run["run_id"], last_step_ni=result.state.last_step_ni)
    weights = storage.join(run["run_dir"], "weights")
    publish(folder, storage.join(weights, "last"))
    if result.is_best:
        publish(folder, storage.join(weights, "best"))
    if result.preview is not None:  # the latest, and one per validated epoch (its evolution in MLflow)
        for name in ("val_predictions.png", f"val_predictions_epoch{result.epoch:03d}.png"):
            storage.write_bytes(storage.join(run["run_dir"], "plots", name), result.preview)
    return ray.train.Checkpoint.from_directory(str(folder))
