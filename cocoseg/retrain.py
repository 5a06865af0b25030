"""One scheduled retraining round: ingest -> (skip when nothing changed) -> train -> evaluate ->
export -> register + gate, warm-started from the champion.

The job ``pipelines.retrain`` runs :func:`retrain` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cocoseg import storage
from cocoseg.config import JobConfig, with_values
from cocoseg.engine.checks import ensure_ray
from cocoseg.registry import CHAMPION, alias_version, connect
from cocoseg.tracking import resolve_tracking_uri
from cocoseg.utils import get_logger

__all__ = ["retrain"]

log = get_logger(__name__)


def _champion(cfg: JobConfig) -> Any:
    """The champion ModelVersion of ``registry.model_name``, or None (no model or no alias yet)."""
    from mlflow.exceptions import MlflowException

    client = connect(resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root))
    try:
        return alias_version(client, cfg.registry.model_name, CHAMPION)
    except MlflowException as exc:
        if "not found" in str(exc).lower() or getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _warm_start(cfg: JobConfig, champion: Any) -> str:
    """Copy the champion's checkpoint (weights + card) under the storage root; returns its URI.

    Returns "" when the champion does not fit this config (another variant or class count).
    The copy lives in object storage so every Ray worker, on any node, can read it.
    """
    import mlflow

    tags = champion.tags or {}
    if tags.get("variant") != cfg.model.variant or tags.get("num_classes") not in (None, str(cfg.model.num_classes)):
        log.info("champion v%s is yolov8%s-seg with %s classes; not warm-starting a %s/%d run",
                 champion.version, tags.get("variant"), tags.get("num_classes"), cfg.model.variant,
                 cfg.model.num_classes)
        return ""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)  # passed, never set process-wide
    dest = storage.join(cfg.storage.root, "warm-start", f"{cfg.registry.model_name}-v{champion.version}")
    with tempfile.TemporaryDirectory(prefix="cocoseg-champion-") as tmp:
        for artifact, name in (("model.safetensors", "model.safetensors"), ("model_card.json", "model_card.json")):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{cfg.registry.model_name}/{champion.version}/artifacts/{artifact}", dst_path=tmp,
                tracking_uri=uri, registry_uri=uri)
            storage.write_bytes(storage.join(dest, name), Path(local).read_bytes())
    return dest if storage.is_s3(dest) else os.path.abspath(dest)


def retrain(cfg: JobConfig) -> dict[str, Any]:
    """One retraining round; returns what happened (``action``: ``skipped`` or ``trained``)."""
    from cocoseg.batch import evaluate
    from cocoseg.engine.trainer import train
    from cocoseg.export.job import export_checkpoint
    from cocoseg.ingest.job import ingest
    from cocoseg.registry.register import register

    started = time.perf_counter()
    ensure_ray(cfg)  # sized for training; ingest alone would size a local Ray for itself
    manifest = ingest(cfg)
    snapshot_id = manifest["snapshot_id"]
    champion = _champion(cfg)
    seen = champion is not None and snapshot_id in (champion.tags or {}).get("data_snapshot", "")
    if manifest.get("skipped") and seen and not cfg.retrain.force:
        msg = (f"source unchanged (snapshot {snapshot_id}) and champion v{champion.version} was trained on it: "
               "nothing to retrain (retrain.force=true trains anyway)")
        print(msg)
        return {"action": "skipped", "snapshot": snapshot_id, "champion": str(champion.version), "reason": msg}
    values = {"train.snapshot": manifest["snapshot_uri"]}
    if champion is not None and cfg.retrain.warm_start:
        weights = _warm_start(cfg, champion)
        if weights:
            values["model.weights"] = weights
            log.info("warm start from champion v%s (%s)", champion.version, weights)
    cfg = with_values(cfg, values)
    trained = train(cfg)
    export_dir = storage.join(cfg.storage.root, "exports", os.path.basename(trained.run_dir.rstrip("/")))
    metrics_file = None
    # Evaluate here, not in register: register finds a snapshot only under storage.root, and the
    # cluster pipeline ingests into the data bucket; unevaluated metrics never beat an evaluated champion.
    if cfg.evaluate.split in manifest.get("splits", {}):
        evaluate.evaluate(cfg, trained.best_weights, manifest["snapshot_uri"], parent_run=trained.mlflow_run_id,
                     out=storage.join(trained.best_weights, f"eval-{cfg.evaluate.split}"))
        metrics_file = storage.join(trained.best_weights, f"eval-{cfg.evaluate.split}", evaluate.METRICS_FILE)
    export_checkpoint(cfg, trained.best_weights, export_dir, metrics_file=metrics_file, train_run_id=trained.mlflow_run_id)
    reg = register(cfg, export_dir)
    out = {"action": "trained", "snapshot": snapshot_id, "mlflow_run_id": trained.mlflow_run_id,
           "version": str(reg.version), "decision": reg.decision.decision, "reason": reg.decision.reason,
           "seconds": round(time.perf_counter() - started, 1)}
    print(f"retrain: {reg.name} v{reg.version} {reg.decision.decision}: {reg.decision.reason}")
    return out
