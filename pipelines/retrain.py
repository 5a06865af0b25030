"""Scheduled retraining: ingest -> (skip if nothing changed) -> train -> evaluate -> export -> register + gate.

    ray job submit --address http://<head>:8265 --working-dir . -- python -m pipelines.retrain \\
        --config pipelines/configs/retrain.yaml ingest.source=s3://data/coco ingest.dest=s3://data \\
        storage.root=s3://ckpt tracking.tracking_uri=https://mlflow.internal train.use_gpu=true

(run on a schedule by ``infra/k8s/retrain-cronjob.yaml`` or ``raycronjob-retrain.yaml``).

Reads: the source dataset (``ingest.source``) and the registry's ``champion`` of
``registry.model_name``. Writes: a new snapshot when the source changed, one training run
(``<storage.root>/runs/<name>``), an export (``<storage.root>/exports/<name>``) and one new
registry version that the metric gate promotes to ``champion`` only if it beats the current one.
The evaluate job scores the new weights on the snapshot's ``evaluate.split`` before the export, so
the export and the gate carry evaluated, comparable metrics (``<weights>/eval-<split>``).

Rerun: when ingest finds the source unchanged (no new snapshot) and the champion was trained on
that snapshot, the job says so and exits 0 without starting any training (``retrain.force=true``
trains anyway). Training warm-starts from the champion's weights (``retrain.warm_start``) when
the champion has the same variant and class count; otherwise it starts from ``model.weights``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cocoseg import storage
from cocoseg.config import ConfigError, JobConfig, load_config, with_values
from cocoseg.registry import CHAMPION, alias_version, connect, resolve_tracking_uri
from cocoseg.utils import UserError, get_logger
from pipelines import config_path
from pipelines._train_checks import ensure_ray

__all__ = ["main", "run"]

log = get_logger("pipelines.retrain")


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
    mlflow.set_tracking_uri(resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root))
    dest = storage.join(cfg.storage.root, "warm-start", f"{cfg.registry.model_name}-v{champion.version}")
    with tempfile.TemporaryDirectory(prefix="cocoseg-champion-") as tmp:
        for artifact, name in (("model.safetensors", "model.safetensors"), ("model_card.json", "model_card.json")):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{cfg.registry.model_name}/{champion.version}/artifacts/{artifact}", dst_path=tmp)
            storage.write_bytes(storage.join(dest, name), Path(local).read_bytes())
    return dest if storage.is_s3(dest) else os.path.abspath(dest)


def run(cfg: JobConfig) -> dict[str, Any]:
    """One retraining round; returns what happened (``action``: ``skipped`` or ``trained``)."""
    from pipelines import evaluate, export, ingest, register, train

    started = time.perf_counter()
    ensure_ray(cfg)  # sized for training; ingest alone would size a local Ray for itself
    manifest = ingest.run(cfg)
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
    trained = train.run(cfg)
    export_dir = storage.join(cfg.storage.root, "exports", os.path.basename(trained.run_dir.rstrip("/")))
    metrics_file = None
    # Evaluate here, not in register: register finds a snapshot only under storage.root, and the
    # cluster pipeline ingests into the data bucket; unevaluated metrics never beat an evaluated champion.
    if cfg.evaluate.split in manifest.get("splits", {}):
        evaluate.run(cfg, trained.best_weights, manifest["snapshot_uri"], parent_run=trained.mlflow_run_id,
                     out=storage.join(trained.best_weights, f"eval-{cfg.evaluate.split}"))
        metrics_file = storage.join(trained.best_weights, f"eval-{cfg.evaluate.split}", evaluate.METRICS_FILE)
    export.run(cfg, trained.best_weights, export_dir, metrics_file=metrics_file, train_run_id=trained.mlflow_run_id)
    reg = register.run(cfg, export_dir)
    out = {"action": "trained", "snapshot": snapshot_id, "mlflow_run_id": trained.mlflow_run_id,
           "version": str(reg.version), "decision": reg.decision.decision, "reason": reg.decision.reason,
           "seconds": round(time.perf_counter() - started, 1)}
    print(f"retrain: {reg.name} v{reg.version} {reg.decision.decision}: {reg.decision.reason}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.retrain", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="job config YAML (e.g. pipelines/configs/retrain.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides))
    except (ConfigError, UserError) as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
