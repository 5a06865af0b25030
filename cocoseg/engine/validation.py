"""Validation off the training path (``validation.mode: async``, the default): each due epoch's
weights are scored by a Ray task of their own while the train workers go on with the next epoch.

Rank 0 of the train worker group drives it (``worker.py``) through :class:`Validations`:

1. **stage** (Ray's checkpoint-upload thread, before the epoch's checkpoint commits): the epoch's
   train metrics and, when it is due for validation, its inference files (weights, card, config)
   are committed under ``<run>/validation/epoch-<e>/`` (marker last). Every committed epoch is
   then either logged or staged, whatever moment a kill lands at.
2. **the task** (:func:`validate_staged`, ``ray.remote``): the evaluate job's path on the staged
   weights (:func:`cocoseg.batch.evaluate.measure`: the ``DetectBatch`` of the evaluate job, in the
   task itself for ``validation.actors=1`` on CPUs, else a Ray Data pool of ``validation.actors``
   actors, ``validation.cpus_per_actor`` each; the one ``Predictor``, the evaluation protocol,
   faster-coco-eval), plus the preview and PR curves. Ray retries it once
   (an error, its worker or an actor killed, its node lost).
3. **collect** (a thread of rank 0, in arrival order): best selection on the validated fitness
   (``weights/best``, its card carrying the val metrics), plots, then the epoch's record (train +
   val metrics together) in the journal and MLflow at the epoch's step: the driver's console
   prints the epoch line then. A task that failed twice gives the record ``val/failed`` = 1 and
   the reason (journal ``validation_error``, MLflow tag ``validation_failed.epoch_<e>``, the
   console); training goes on. Then the stage is removed.
4. **resume**: staged epochs the resumed checkpoint covers are validated again unless their
   record was logged; later ones are dropped (they are trained again).

Every record goes through the collector thread, so the journal keeps one writer.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from cocoseg import storage
from cocoseg.config import JobConfig
from cocoseg.engine.checkpoint import CheckpointError, check_complete, publish
from cocoseg.utils import get_logger

__all__ = ["STAGE_DIR", "Validations", "staged_epochs", "validate_staged", "validation_config"]

log = get_logger(__name__)
STAGE_DIR = "validation"
TRAIN_METRICS_FILE = "train_metrics.json"
FITNESS_KEY = "val/mask_ap50_95"


def stage_uri(run_dir: str, epoch: int) -> str:
    return storage.join(run_dir, STAGE_DIR, f"epoch-{epoch:04d}")


def staged_epochs(run_dir: str) -> dict[int, str]:
    """{epoch: URI} of the run's staged validations, complete or not."""
    root = storage.join(run_dir, STAGE_DIR)
    found = {}
    for entry in storage.list_files(root):
        name = entry.uri[len(root):].lstrip("/").split("/")[0]
        if name.startswith("epoch-") and name[6:].isdigit():
            found[int(name[6:])] = storage.join(root, name)
    return found


def validation_config(cfg: JobConfig) -> JobConfig:
    """The evaluate job's config for one validation: the pool sized by ``validation.*``, the
    train run's image size and ``data.max_val_images``; the protocol (conf, iou, max_det) stays
    ``evaluate.*``'s, so validation and ``cocoseg evaluate`` give comparable numbers."""
    t, v = cfg.train, cfg.validation
    e = dataclasses.replace(cfg.evaluate, actors=v.actors, cpus_per_actor=v.cpus_per_actor, use_gpu=v.use_gpu,
                            imgsz=cfg.model.imgsz, batch_size=t.val_batch_size or 2 * t.batch_size,
                            threads_per_actor=max(1, int(v.cpus_per_actor)))
    return dataclasses.replace(cfg, evaluate=e)


def validate_staged(cfg: JobConfig, snapshot_uri: str, weights: str, epoch: int,
                    class_names: tuple[str, ...]) -> dict[str, Any]:
    """Score the staged weights of ``epoch`` (runs as a Ray task). Returns ``metrics`` (the
    ``val/*`` keys, ``val/images``, ``val/task_s``), ``plots`` (``preview`` PNG bytes or None,
    ``curves``) and ``scorer``."""
    from cocoseg.batch.evaluate import measure
    from cocoseg.cluster import quiet_ray_data
    from cocoseg.engine.build import render_preview

    quiet_ray_data()
    start = time.perf_counter()
    vcfg = validation_config(cfg)
    doc = measure(vcfg, weights, snapshot_uri, "val", limit=cfg.data.max_val_images, confusion=True,
                  in_process=cfg.validation.in_task)
    coco = doc["coco"]
    curves = {"epoch": epoch, "class_names": list(class_names),
              "pr50": {kind: coco[t]["per_class_pr50"] for t, kind in (("bbox", "box"), ("segm", "mask"))},
              "confusion": {"conf": 0.25, "iou": 0.45, "matrix": doc.pop("confusion")}}
    preview = render_preview(cfg, weights, snapshot_uri, class_names) if cfg.train.preview_images else None
    metrics = {**doc["metrics"], "val/images": float(doc["images"]), "val/task_s": time.perf_counter() - start}
    return {"metrics": metrics, "plots": {"preview": preview, "curves": curves}, "scorer": doc["scorer"]}


def _reason(exc: BaseException) -> str:
    """One line: the innermost error of a Ray task failure."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


class Validations:
    """Rank 0's asynchronous validations of one run attempt (see the module doc).

    ``log_epoch(epoch, metrics, note)`` logs an epoch's record (``tracking.RunLogger.log_epoch``);
    ``on_result(epoch, metrics, plots, is_best)`` writes plots (``worker.py``); ``task``: the
    ``ray.remote`` function run per validation (``validate_staged``'s signature).
    """

    def __init__(self, cfg: JobConfig, run, *, log_epoch: Callable[..., None], logged: dict[int, dict[str, float]],
                 on_result: Callable[..., None] | None = None, task: Callable | None = None) -> None:
        self.cfg, self.run = cfg, run
        self._log_epoch, self._on_result = log_epoch, on_result
        opts = {"num_cpus": cfg.validation.cpus_per_actor, "max_retries": 1, "retry_exceptions": True}
        self._task = (task or ray.remote(validate_staged)).options(**opts)
        fitness = {e: m[FITNESS_KEY] for e, m in logged.items() if FITNESS_KEY in m}
        self.logged = set(logged)
        self.best_epoch, self.best = max(fitness.items(), key=lambda kv: (kv[1], -kv[0]), default=(-1, -1.0))
        self._cond = threading.Condition()
        self._pending: dict[Any, tuple[int, dict[str, float]]] = {}  # task ref -> (epoch, train metrics)
        self._queued: list[tuple[int, dict[str, float]]] = []  # staged, waiting for a slot: (epoch, train metrics)
        self._records: list[tuple[int, dict[str, float], str]] = []  # ready to log: (epoch, metrics, note)
        self._expected: set[int] = set()  # epochs whose record is not logged yet
        self._error: BaseException | None = None
        self._stop = False
        self.results: dict[int, dict[str, float]] = {}
        self._thread = threading.Thread(target=self._collect, name="cocoseg-validations", daemon=True)
        self._thread.start()

    # -- the train side -------------------------------------------------------------------------
    def expect(self, epoch: int) -> None:
        """Main thread, at the end of ``epoch``: its record will come (now or after validation)."""
        with self._cond:
            self._expected.add(epoch)

    def stage(self, epoch: int, metrics: dict[str, float], folder: str | None) -> None:
        """Commit the epoch's train metrics and, when ``folder`` (the local checkpoint) is given,
        its inference files under the epoch's stage, then start its validation (or, without
        ``folder``, queue its record). Call it before the epoch's checkpoint commits."""
        uri = stage_uri(self.run.run_dir, epoch)
        storage.write_json(storage.join(uri, TRAIN_METRICS_FILE), {"validate": folder is not None, "metrics": metrics})
        if folder is None:
            self._queue_record(epoch, metrics)
            return
        publish(folder, uri)  # marker last: a stage without it is dropped on resume
        self.submit(epoch, metrics)

    def submit(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queue the epoch's validation; at most ``validation.concurrency`` run at once (each holds a
        Ray Data pool: more at once could starve one another's read tasks of CPUs)."""
        with self._cond:
            self._expected.add(epoch)
            self._queued.append((epoch, dict(metrics)))
            self._cond.notify_all()

    def _start_queued(self) -> None:
        with self._cond:
            while self._queued and len(self._pending) < self.cfg.validation.concurrency:
                epoch, metrics = self._queued.pop(0)
                ref = self._task.remote(self.cfg, self.run.snapshot_uri, stage_uri(self.run.run_dir, epoch), epoch,
                                        tuple(self.run.class_names))
                self._pending[ref] = (epoch, metrics)

    def _queue_record(self, epoch: int, metrics: dict[str, float]) -> None:
        with self._cond:
            self._expected.add(epoch)
            self._records.append((epoch, dict(metrics), ""))
            self._cond.notify_all()

    def resume(self, next_epoch: int) -> list[int]:
        """Finish what a kill interrupted: staged epochs before ``next_epoch`` (their checkpoint
        committed) without a logged record are validated again (or, unvalidated, logged); stages
        already logged, not committed, or of epochs trained again are removed. -> epochs resumed."""
        resumed = []
        for epoch, uri in sorted(staged_epochs(self.run.run_dir).items()):
            staged = None
            if epoch < next_epoch and epoch not in self.logged:
                try:
                    staged = storage.read_json(storage.join(uri, TRAIN_METRICS_FILE))
                    if staged["validate"]:
                        check_complete(uri)
                except (CheckpointError, FileNotFoundError, ValueError, KeyError, TypeError):
                    staged = None
            if staged is None:
                storage.delete(uri, recursive=True)
                continue
            resumed.append(epoch)
            if staged["validate"]:
                log.info("validating epoch %d again: its validation was interrupted", epoch)
                self.submit(epoch, staged["metrics"])
            else:
                self._queue_record(epoch, staged["metrics"])
        return resumed

    def pending(self) -> int:
        """Epochs whose record is not logged yet (validating, queued, or waiting to be staged)."""
        with self._cond:
            return len(self._expected)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every expected epoch is logged (the run's end); re-raises a collector error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._expected and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"validations of epochs {sorted(self._expected)} still running")
                self._cond.wait(1.0 if left is None else min(left, 1.0))
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Stop collecting. Validations still running (an attempt ending on an error) are
        cancelled: their stages stay, and the next attempt validates them again."""
        with self._cond:
            self._stop = True
            pending, self._pending, self._queued = list(self._pending), {}, []
            self._cond.notify_all()
        for ref in pending:
            ray.cancel(ref, force=True)
        self._thread.join(timeout=30)

    # -- the collector thread -------------------------------------------------------------------
    def _collect(self) -> None:
        try:
            while True:
                self._start_queued()
                with self._cond:
                    if self._stop:
                        return
                    records, self._records = self._records, []
                    refs = list(self._pending)
                    if not records and not refs:
                        self._cond.wait(0.5)
                        continue
                for epoch, metrics, note in records:
                    self._log(epoch, metrics, note)
                    storage.delete(stage_uri(self.run.run_dir, epoch), recursive=True)
                if refs:
                    done, _ = ray.wait(refs, num_returns=1, timeout=0.5)
                    for ref in done:
                        self._finish(ref)
        except BaseException as exc:  # surfaced to the train loop by wait()
            log.exception("the validation collector failed")
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _finish(self, ref) -> None:
        with self._cond:
            entry = self._pending.pop(ref, None)
        if entry is None:  # cancelled by close()
            return
        epoch, train_metrics = entry
        note, plots, metrics = "", None, dict(train_metrics)
        try:
            out = ray.get(ref)
            metrics.update(out["metrics"])
            plots = out["plots"]
        except (ray.exceptions.RayError, OSError, ValueError) as exc:
            note = _reason(exc)
            metrics["val/failed"] = 1.0
            log.error("validation of epoch %d failed twice (%s); recorded as failed, training goes on", epoch, note)
        is_best = FITNESS_KEY in metrics and metrics[FITNESS_KEY] > self.best
        uri = stage_uri(self.run.run_dir, epoch)
        if is_best:  # before the record: a kill in between validates the epoch again on resume
            self.best, self.best_epoch = metrics[FITNESS_KEY], epoch
            publish(uri, storage.join(self.run.run_dir, "weights", "best"), card_metrics={**_val(metrics), "epoch": epoch})
        if self._on_result is not None and plots is not None:
            self._on_result(epoch, metrics, plots, is_best)
        self._log(epoch, metrics, note)
        storage.delete(uri, recursive=True)

    def _log(self, epoch: int, metrics: dict[str, float], note: str) -> None:
        self._log_epoch(epoch, metrics, note)
        with self._cond:
            self.results[epoch] = metrics
            self.logged.add(epoch)
            self._expected.discard(epoch)
            self._cond.notify_all()


def _val(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
