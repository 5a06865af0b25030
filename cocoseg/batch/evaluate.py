"""Evaluate weights on a snapshot split: Ray Data batch inference in an actor pool
(:class:`cocoseg.inference.DetectBatch`), detections gathered to the driver, COCO box and mask AP
(per class too) by faster-coco-eval (``evaluate.scorer``; pycocotools on request), ``metrics.json``
(its ``scorer`` names the scorer and version) and an MLflow run. Training's validation runs the same
:func:`measure` (``cocoseg/engine/validation.py``).

The job ``pipelines.evaluate`` runs :func:`evaluate` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from typing import Any

import ray

from cocoseg import storage
from cocoseg.batch.sizing import EVALUATE_READ_CPUS, Pool, local_ray_kwargs, plan_pool, waiting_for
from cocoseg.cluster import StallWatch, start_ray
from cocoseg.config import ConfigError, JobConfig
from cocoseg.config_checks import absolute, prepare, ready, require
from cocoseg.data.schema import (
    MANIFEST_NAME,
    iter_split_batches,
    list_shards,
    read_manifest,
    snapshot_to_coco,
)
from cocoseg.data.stage import INPUT_COLUMNS
from cocoseg.inference import DetectBatch, Protocol, detections_from_row, resolve_weights
from cocoseg.metrics import COCOEvaluator, flatten_metrics, per_class_metrics
from cocoseg.model.weights import read_card
from cocoseg.utils import UserError, get_logger

__all__ = ["METRICS_FILE", "export_metrics", "evaluate", "plan_detection", "pool_size", "runs_here"]

log = get_logger(__name__)
METRICS_FILE = "metrics.json"


def pool_size(cfg: JobConfig) -> int:
    """Actors: ``evaluate.actors``, else as many as the cluster's CPUs (or GPUs) hold, one CPU
    kept for the Parquet read tasks (cocoseg.batch.sizing; refuses a pool that cannot run)."""
    return plan_pool(cfg, ray.cluster_resources(), EVALUATE_READ_CPUS).actors


def stall_watch(cfg: JobConfig, job: str, pool: Pool, read_cpus: float) -> StallWatch:
    """The job's no-progress line after ``evaluate.stall_warn_s`` seconds (cocoseg.cluster.StallWatch)."""
    return StallWatch(job, cfg.evaluate.stall_warn_s,
                      lambda: waiting_for(pool, read_cpus, ray.available_resources(), ray.cluster_resources()))


def _detections(cfg: JobConfig, weights: str, shards: list[str], protocol: Protocol, num_classes: int, pool: Pool,
                detector: type = DetectBatch, detector_kwargs: dict[str, Any] | None = None, limit: int = 0):
    """Ray Data: shards (the first ``limit`` rows when > 0) -> actor ``pool`` (as planned by
    cocoseg.batch.sizing) -> a stream of detection batches (pyarrow Tables) to the driver.

    ``detector``: the ``map_batches`` class (:class:`DetectBatch`, or the served artifacts' one of
    ``cocoseg.batch.served`` with its extra ``detector_kwargs``)."""
    e = cfg.evaluate
    ctx = ray.data.DataContext.get_current()
    saved, ctx.use_datasource_v2 = ctx.use_datasource_v2, False  # the classic reader (see cocoseg/data/train_input.py)
    try:
        ds = ray.data.read_parquet(shards, columns=list(INPUT_COLUMNS))
    finally:
        ctx.use_datasource_v2 = saved
    if limit:
        ds = ds.limit(limit)
    log.info("evaluate: %s, batch %d", pool.describe(), e.batch_size)
    ds = ds.repartition(target_num_rows_per_block=e.batch_size).map_batches(
        detector, fn_constructor_kwargs={"weights": weights, "protocol": protocol.to_dict(),
                                         "num_classes": num_classes, "device": "cuda" if e.use_gpu else "cpu",
                                         "threads": pool.threads, **(detector_kwargs or {})},
        batch_size=e.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=e.cpus_per_actor, num_gpus=1 if e.use_gpu else 0)
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")


def runs_here(cfg: JobConfig, rows: int) -> bool:
    """Whether an evaluation of ``rows`` images detects in this process rather than in an actor
    pool: on CPUs, with the automatic pool (``evaluate.actors=0``), when the rows make one batch
    (``evaluate.batch_size``). Its one actor would cost more to start (a Python process, the
    imports, the model load) than its one batch costs to detect; the numbers are the same."""
    e = cfg.evaluate
    return e.actors == 0 and not e.use_gpu and 0 < rows <= e.batch_size


def plan_detection(cfg: JobConfig, rows: int) -> tuple[Pool | None, int]:
    """``(pool, 0)``: the actor pool for ``rows`` rows (planned before any actor starts); or
    ``(None, threads)`` when they are detected in this process (:func:`runs_here`), with the
    threads its one actor would have had."""
    pool = plan_pool(cfg, ray.cluster_resources(), EVALUATE_READ_CPUS, rows=rows)
    if not runs_here(cfg, rows):
        return pool, 0
    log.info("evaluate: %d image(s), one batch: detected in this process (%d thread(s))", rows, pool.threads)
    return None, pool.threads


def _detections_here(cfg: JobConfig, weights: str, snapshot: str, split: str, protocol: Protocol, num_classes: int,
                     limit: int = 0, detector: type = DetectBatch, detector_kwargs: dict[str, Any] | None = None,
                     threads: int = 0):
    """:func:`_detections`' stream computed in this process, on the CPUs it holds: the same
    ``detector`` over the split read one row group at a time, no actor, no read task. The
    process's torch thread count (the detector sets its own) is restored at the end."""
    import torch

    e = cfg.evaluate
    threads = threads or e.threads_per_actor or max(1, math.ceil(e.cpus_per_actor))
    before = torch.get_num_threads()
    try:
        run = detector(weights=weights, protocol=protocol.to_dict(), num_classes=num_classes, device="cpu",
                       threads=threads, **(detector_kwargs or {}))
        for batch in iter_split_batches(snapshot, split, list(INPUT_COLUMNS), batch_rows=e.batch_size, limit=limit):
            yield run(batch)
    finally:
        torch.set_num_threads(before)


def measure(cfg: JobConfig, weights: str, snapshot: str, split: str, *, limit: int = 0,
            confusion: bool = False, in_process: bool = False) -> dict[str, Any]:
    """Run the evaluation; returns the ``metrics.json`` document (nothing written). ``limit``: the
    split's first N images only (0: all); ``confusion``: add the box confusion matrix (a list of
    rows, ``COCOEvaluator.confusion_matrix``) as ``confusion``; ``in_process``: detect here, on
    CPUs, instead of in a Ray Data actor pool (a validation task's one actor's worth of work); an
    evaluation of one batch does so anyway (:func:`runs_here`)."""
    manifest = read_manifest(snapshot)
    shards = list_shards(manifest, split)
    planned = limit or manifest.splits[split].images
    pool, threads = (None, 0) if in_process else plan_detection(cfg, planned)
    local = resolve_weights(weights) if weights.startswith("models:/") else weights
    card = read_card(local)
    protocol = Protocol(imgsz=cfg.evaluate.imgsz or int(card.imgsz), conf=cfg.evaluate.conf, iou=cfg.evaluate.iou,
                        max_det=cfg.evaluate.max_det)
    evaluator = COCOEvaluator(snapshot_to_coco(snapshot, split), category_ids=list(manifest.category_ids),
                              scorer=cfg.evaluate.scorer)
    start, images, detections = time.perf_counter(), 0, 0
    if pool is None:  # nothing to wait for but this process: no stall watch
        stream = _detections_here(cfg, weights, snapshot, split, protocol, card.num_classes, limit=limit, threads=threads)
        watch = None
    else:
        stream = _detections(cfg, weights, shards, protocol, card.num_classes, pool, limit=limit)
        watch = stall_watch(cfg, "evaluate", pool, EVALUATE_READ_CPUS)
    with watch or contextlib.nullcontext():
        for table in stream:
            if watch is not None:
                watch.tick()
            rows = table.to_pylist()
            evaluator.process([r["image_id"] for r in rows], [detections_from_row(r) for r in rows])
            images += len(rows)
            detections += sum(len(r["scores"]) for r in rows)
    inference_s = time.perf_counter() - start
    result = evaluator.evaluate()
    flat = flatten_metrics(result)
    names = {"AP": "ap50_95", "AP50": "ap50", "AP75": "ap75"}
    metrics = {f"val/{kind}_{names[stat]}": flat[f"{kind}/{stat}"] for kind in ("box", "mask") for stat in names}
    metrics.update(per_class_metrics(result, prefix="val/"))
    seconds = time.perf_counter() - start
    doc = {"metrics": metrics, "coco": result, "snapshot_id": manifest.snapshot_id, "split": split,
           "images": images, "detections": detections, "protocol": protocol.to_dict(),
           "protocol_hash": protocol.hash(), "weights": weights, "card_snapshot": card.data_snapshot,
           "scorer": evaluator.scorer, "seconds": round(seconds, 3),
           "scoring_s": round(seconds - inference_s, 3), "images_per_s": round(images / max(inference_s, 1e-9), 3)}
    if confusion:
        doc["confusion"] = evaluator.confusion_matrix().tolist()
    return doc


def export_metrics(doc: dict[str, Any]) -> dict[str, Any]:
    """An evaluation document -> the flat metrics an export carries (and the gate compares):
    the metric keys plus ``eval.snapshot_id`` / ``eval.split`` / ``eval.images`` / ``eval.protocol_hash``
    and ``eval.scorer`` (which COCO scorer made the numbers; "unknown" for documents older than it)."""
    return {**doc["metrics"], "val_snapshot": doc["snapshot_id"], "eval.snapshot_id": doc["snapshot_id"],
            "eval.split": doc["split"], "eval.images": doc["images"], "eval.protocol_hash": doc["protocol_hash"],
            "eval.scorer": doc.get("scorer", "unknown")}


def _parent_run_id(client: Any, experiment: str, parent: str) -> str:
    if not parent or re.fullmatch(r"[0-9a-f]{32}", parent):
        return parent
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], f"attributes.run_name = '{parent}'", max_results=1) if exp else []
    if not found:
        raise UserError(f"--parent-run {parent!r}: no run of that name in experiment {experiment!r}")
    return found[0].info.run_id


def log_to_mlflow(cfg: JobConfig, doc: dict[str, Any], parent: str = "") -> str:
    """One MLflow run holding the metrics, the protocol and metrics.json; returns its id."""
    from mlflow import MlflowClient

    from cocoseg.tracking import create_run, finish_run, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    client = MlflowClient(uri)
    parent_id = _parent_run_id(client, cfg.tracking.experiment, parent)
    run_id = create_run(tracking_uri=uri, experiment=cfg.tracking.experiment, run_name=f"evaluate-{doc['split']}",
                        params={f"protocol.{k}": v for k, v in doc["protocol"].items()},
                        tags={"snapshot_id": doc["snapshot_id"], "split": doc["split"], "job": "evaluate",
                              "scorer": doc["scorer"],
                              "protocol_hash": doc["protocol_hash"], "weights": doc["weights"]},
                        parent_run_id=parent_id)
    numbers = {**doc["metrics"], "val/images": float(doc["images"]), "eval/images_per_s": doc["images_per_s"]}
    for key, value in numbers.items():
        client.log_metric(run_id, key, float(value))
    client.log_dict(run_id, doc, METRICS_FILE)
    finish_run(uri, run_id)
    return run_id


def _check_inputs(weights: str, snapshot: str, split: str) -> None:
    """Once, on the driver: the weights and the snapshot exist and the snapshot has ``split``."""
    require(weights, "WEIGHTS", "the weights", "pass a checkpoint folder (local or s3://) or models:/NAME@ALIAS")
    require(storage.join(snapshot, MANIFEST_NAME), "SNAPSHOT", f"the snapshot's {MANIFEST_NAME}",
            "pass the snapshot folder that `cocoseg ingest` printed (…/snapshots/<id>)")
    splits = read_manifest(snapshot).splits
    if split not in splits:
        raise ConfigError(f"--split={split} (evaluate.split): snapshot {snapshot} has no such split (it has "
                          f"{', '.join(splits) or 'none'}); set --split to one of them")


def evaluate(cfg: JobConfig, weights: str, snapshot: str, *, split: str = "", out: str = "", parent_run: str = "",
        log_mlflow: bool = True) -> dict[str, Any]:
    """Evaluate ``weights`` on ``snapshot``'s ``split``; writes ``out/metrics.json``; returns its document."""
    cfg = prepare("evaluate", cfg)
    split = split or cfg.evaluate.split
    weights, snapshot, out = absolute(weights), absolute(snapshot), absolute(out)
    if not out:
        if weights.startswith("models:/"):
            raise UserError("--out is required when WEIGHTS is a models:/ URI")
        out = storage.join(weights, f"eval-{split}")
    _check_inputs(weights, snapshot, split)
    ready("evaluate", cfg, {"weights": weights, "snapshot": snapshot, "split": split, "out": out})
    start_ray(**local_ray_kwargs(EVALUATE_READ_CPUS))  # RAY_ADDRESS, else a local Ray; no-op when connected
    doc = measure(cfg, weights, snapshot, split)
    if log_mlflow:
        doc["mlflow_run_id"] = log_to_mlflow(cfg, doc, parent_run)
    storage.write_json(storage.join(out, METRICS_FILE), doc)
    m = doc["metrics"]
    log.info("evaluate %s on %s/%s: %d images, box AP %.4f, mask AP %.4f (%.1f img/s; scored by %s) -> %s",
             weights, doc["snapshot_id"], split, doc["images"], m["val/box_ap50_95"], m["val/mask_ap50_95"],
             doc["images_per_s"], doc["scorer"], storage.join(out, METRICS_FILE))
    return doc
