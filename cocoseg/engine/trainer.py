"""Train a YOLOv8-seg variant on a Parquet snapshot with Ray Train (DDP over N workers, M nodes): the
driver side. It checks the input and the cluster before any worker starts, opens the MLflow run, starts
the input actors (:class:`cocoseg.data.train_input.TrainInput`) and fits a ``TorchTrainer`` running
:func:`cocoseg.engine.worker.train_loop_per_worker`.

The job ``pipelines.train`` runs :func:`train` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from cocoseg import storage, tracking
from cocoseg.cluster import quiet_ray_data, train_logging_config
from cocoseg.config import JobConfig, to_dict
from cocoseg.config_checks import prepare, ready
from cocoseg.data.repeat_factor import expected_rows
from cocoseg.data.schema import Manifest, list_shards
from cocoseg.data.train_input import TrainInput
from cocoseg.engine import class_balance
from cocoseg.engine.build import RunInfo, batches_per_epoch, resolve_recipe
from cocoseg.engine.checks import (
    check_cluster,
    check_feed,
    ensure_ray,
    lost_capacity,
    resolve_snapshot,
    scaling_workers,
)
from cocoseg.engine.optim import OptimizerChoice
from cocoseg.engine.watchdog import collective_timeout_s
from cocoseg.engine.worker import FITNESS_KEY, train_loop_per_worker
from cocoseg.utils import get_logger, git_commit, redact

# The MLflow params of a training run: the sections this job reads (not export.* / registry.*).
PARAM_SECTIONS = ("model", "train", "validation", "scaling", "data", "storage", "tracking")

__all__ = ["TrainResult", "train"]

log = get_logger(__name__)
CONTROLLER_FAILURES = 2


@dataclass
class TrainResult:
    """What a training run produced (``pipelines.demo`` and ``cocoseg train`` print it)."""

    mlflow_run_id: str
    tracking_uri: str
    run_dir: str
    best_weights: str
    last_weights: str
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _train_input(cfg: JobConfig, manifest: Manifest, repeats: Any = None) -> TrainInput:
    """Start the run's input actors (decode + augment, kept for all epochs; see cocoseg.data.train_input)."""
    t, m = cfg.train, cfg.model
    rows = [s.rows for s in manifest.splits["train"].shards]
    return TrainInput.start(list(zip(list_shards(manifest, "train"), rows, strict=True)), augment=t.augment,
                            epochs=t.epochs, close_mosaic=t.close_mosaic, imgsz=m.imgsz, num_classes=m.num_classes,
                            seed=t.seed, actors=cfg.data.actors, cpus_per_actor=cfg.data.cpus_per_actor,
                            chunk_rows=cfg.data.batch_rows, limit=cfg.data.max_train_images,
                            mask_ratio=t.mask_ratio, chunk_runs=cfg.data.chunk_runs, repeats=repeats)


def train(cfg: JobConfig, *, parent_run_id: str = "", callbacks: Sequence[ray.train.UserCallback] = (),
          clock: Callable[[], float] | None = None) -> TrainResult:
    """Train per ``cfg``; returns the MLflow run id, where the weights are, and the final metrics.

    ``callbacks``: extra Ray Train ``UserCallback``s (``pipelines.tune`` passes its Tune reporter).
    ``clock``: the seconds clock of ``train.time_budget_h`` on rank 0 (picklable; default
    ``time.monotonic``; engine/budget.py says when it is read)."""
    started = time.perf_counter()
    cfg, manifest, tracking_uri = _checked(cfg)
    t, s = cfg.train, cfg.scaling
    run_name = cfg.tracking.run_name or f"{cfg.model.variant}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs_root = storage.join(cfg.storage.root, "runs")
    if not storage.is_s3(runs_root):
        runs_root = os.path.abspath(runs_root)
    run_dir = storage.join(runs_root, run_name)
    storage.write_json(storage.join(run_dir, "config.json"), redact(to_dict(cfg)))
    _drop_torn_ray_snapshot(run_dir)
    n_train = min(manifest.splits["train"].images, cfg.data.max_train_images or 1 << 62)
    repeats = class_balance.repeat_factors(cfg, manifest)  # None unless data.repeat_factor_threshold > 0
    if repeats is not None:  # the schedule counts the epoch's rows with their (average) copies
        n_train = round(expected_rows(repeats, cfg.data.max_train_images))
    recipe = resolve_recipe(cfg, world_size=s.num_workers, train_images=n_train)
    log.info("%s", recipe.describe(t.optimizer))
    mlflow_run_id = _mlflow_run(cfg, tracking_uri, run_name, run_dir, manifest,
                                parent_run_id or cfg.tracking.parent_run_id, recipe)
    class_balance.report_classes(manifest, run_dir, tracking_uri, mlflow_run_id)
    run_info = RunInfo(run_dir=run_dir, mlflow_run_id=mlflow_run_id,
                       batches_per_epoch=batches_per_epoch(n_train, s.num_workers, t.batch_size), recipe=recipe,
                       snapshot_id=manifest.snapshot_id, snapshot_uri=manifest.snapshot_uri,
                       class_names=manifest.class_names, category_ids=manifest.category_ids)
    inputs = _train_input(cfg, manifest, repeats)
    trainer = _torch_trainer(cfg, run_info, inputs, tracking_uri, runs_root, callbacks=callbacks, clock=clock)
    result = _fit(cfg, trainer, inputs, run_dir)
    return _finish(result, run_name, run_dir, mlflow_run_id, tracking_uri, started)


def _checked(cfg: JobConfig) -> tuple[JobConfig, Manifest, str]:
    """The config edge, the snapshot, the tracking server and the cluster, checked before any
    worker starts (most before Ray starts): -> (resolved config, manifest, tracking URI)."""
    cfg = prepare("train", cfg)  # cross-key rules and absolute paths (cocoseg.config_checks)
    manifest = resolve_snapshot(cfg.train, cfg.storage, cfg.model)  # refuses bad input before Ray even starts
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    if cfg.tracking.tracking_uri:  # without credentials from here on (they are in MLflow's variables)
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, tracking_uri=tracking_uri))
    if not cfg.tracking.offline_ok:
        tracking.preflight(tracking_uri)  # a dead server: one line within seconds, before Ray starts
    ready("train", cfg, {"snapshot": manifest.snapshot_uri})
    ensure_ray(cfg.scaling, cfg.data, cfg.validation)
    quiet_ray_data()
    gpu = check_cluster(cfg.scaling, cfg.data, cfg.validation)
    if warning := check_feed(cfg.train, cfg.model, cfg.scaling, cfg.data, gpu):  # a shortfall under 2x
        log.warning("%s", warning)
    return cfg, manifest, tracking_uri


def _torch_trainer(cfg: JobConfig, run_info: RunInfo, inputs: TrainInput, tracking_uri: str, runs_root: str, *,
                   callbacks: Sequence[ray.train.UserCallback], clock: Callable[[], float] | None) -> TorchTrainer:
    """The ``TorchTrainer`` of the run: the worker loop and what it is handed (``loop_config``)."""
    t, s, run_dir = cfg.train, cfg.scaling, run_info.run_dir
    make_logger = functools.partial(
        tracking.RunLogger, tracking_uri=tracking_uri, run_id=run_info.mlflow_run_id, journal=tracking.journal_uri(run_dir),
        system_metrics=cfg.tracking.system_metrics, system_metrics_interval=cfg.tracking.system_metrics_interval_s,
        credentials=tracking.auth_env(), epochs=t.epochs, model_id=tracking.read_run_record(run_dir).get("model_id", ""))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg, "run": run_info, "input": inputs, "clock": clock, "make_logger": make_logger,
                           # a bar only for a person at a terminal: piped into a log (CI, `| tee`, a
                           # `ray job` driver, a Tune trial) its redraws are lines of Ray-prefixed noise
                           "progress": sys.stdout.isatty()},
        # the collective timeout just above the hang watchdog's (engine/watchdog.py), not 30 minutes
        torch_config=TorchConfig(timeout_s=int(collective_timeout_s(s.hang_timeout_s))),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling_workers(s), use_gpu=s.use_gpu, placement_strategy=s.placement_strategy,
            resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=run_dir.rstrip("/").rsplit("/", 1)[-1], storage_path=runs_root, logging_config=train_logging_config(),
            callbacks=list(callbacks) or None,
            # A group that cannot start (a node lost, a fixed group too big for what is left) is a
            # controller failure, unlimited by default: 2 (60 s start timeouts each) then stop.
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures,
                                                   controller_failure_limit=CONTROLLER_FAILURES,
                                                   max_preemption_failures=s.max_preemption_failures),
            checkpoint_config=_checkpoint_config(cfg)),
    )


def _fit(cfg: JobConfig, trainer: TorchTrainer, inputs: TrainInput, run_dir: str) -> ray.train.Result:
    """Run the workers to the end (the driver's console prints each epoch from the journal); a
    failure is journaled, and named in one line when the cluster lost the capacity to go on."""
    journal = tracking.journal_uri(run_dir)
    try:
        with tracking.EpochPrinter(lambda: tracking.read_journal(journal), cfg.train.epochs):
            return trainer.fit()
    except Exception:
        tracking.end_run(run_dir, "FAILED")  # journaled; never hides the training error
        lost = lost_capacity(cfg.scaling)
        if lost is not None:
            raise lost from None
        raise
    finally:
        inputs.stop()


def _finish(result: ray.train.Result, run_name: str, run_dir: str, mlflow_run_id: str, tracking_uri: str,
            started: float) -> TrainResult:
    """The run's end journaled (and in MLflow), the result, one console line."""
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    completion = tracking.end_run(run_dir, "FINISHED")
    mlflow_run_id = completion.run_id if completion else mlflow_run_id
    out = TrainResult(mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri, run_dir=run_dir,
                      best_weights=storage.join(run_dir, "weights", "best"),
                      last_weights=storage.join(run_dir, "weights", "last"), metrics=metrics,
                      seconds=time.perf_counter() - started)
    log.info("run %s done in %.0f s: mask AP50-95 %.4f, AP50 %.4f; weights %s; MLflow run %s at %s",
             run_name, out.seconds, metrics.get("val/mask_ap50_95", float("nan")),
             metrics.get("val/mask_ap50", float("nan")), out.best_weights, mlflow_run_id, tracking_uri)
    return out


def _checkpoint_config(cfg: JobConfig) -> ray.train.CheckpointConfig:
    """Blocking validation: the best ``checkpoints_to_keep`` by val mask AP50-95 and, always, the
    latest (resume). Asynchronous: an epoch's fitness is not known when it reports, so the latest
    ``checkpoints_to_keep``; the best epoch's weights are ``weights/best`` (engine/validation.py)."""
    t = cfg.train
    if cfg.validation.mode == "async":
        return ray.train.CheckpointConfig(num_to_keep=t.checkpoints_to_keep)
    return ray.train.CheckpointConfig(num_to_keep=t.checkpoints_to_keep, checkpoint_score_attribute=FITNESS_KEY,
                                      checkpoint_score_order="max")


def _drop_torn_ray_snapshot(run_dir: str) -> None:
    """Ray Train writes ``checkpoint_manager_snapshot.json`` in place (not atomically on local
    disks); a driver killed mid-write leaves JSON that Ray cannot load. The resume does not need
    it (workers pick the newest complete checkpoint themselves), so a torn one is removed."""
    uri = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    try:
        storage.read_json(uri)
    except FileNotFoundError:
        return
    except ValueError as exc:
        log.warning("removing %s, torn by an interrupted write (%s); the run resumes from its newest "
                    "complete checkpoint", uri, exc)
        storage.delete(uri)


def _mlflow_run(cfg: JobConfig, uri: str, run_name: str, run_dir: str, manifest: Manifest, parent: str,
                recipe: OptimizerChoice | None = None) -> str:
    """Reuse the MLflow run of an earlier attempt of this run (a resume), else create it ("" when
    MLflow is down and ``tracking.offline_ok``: it is created when the run ends or is synced)."""
    ctx = ray.get_runtime_context()
    tags = {"snapshot_id": manifest.snapshot_id, "git_commit": git_commit(), "variant": cfg.model.variant,
            "ray_job_id": os.environ.get("RAY_JOB_SUBMISSION_ID") or ctx.get_job_id(), "run_dir": run_dir}
    artifacts = ""
    if uri.startswith("sqlite:"):  # embedded store: artifacts beside it, not in the current directory
        root = cfg.storage.root if storage.is_s3(cfg.storage.root) else os.path.abspath(cfg.storage.root)
        artifacts = storage.join(root, "mlartifacts")
    params = {k: v for k, v in to_dict(cfg).items() if k in PARAM_SECTIONS}
    if recipe is not None:
        params["recipe"] = asdict(recipe)
    return tracking.open_run(run_dir, tracking_uri=uri, experiment=cfg.tracking.experiment, run_name=run_name,
                             params=params, tags=tags, parent_run_id=parent, artifact_location=artifacts,
                             inputs=tracking.dataset_inputs(manifest), offline_ok=cfg.tracking.offline_ok)
