"""One scheduled retraining round: ingest -> (skip when nothing changed) -> what changed against the
champion's snapshot (``diff.json``, the champion's AP on the new and changed images) -> train ->
export -> register (which evaluates the eager model and the served artifacts) + gate on evidence,
warm-started from the champion.

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
from cocoseg.data.manifest import Manifest
from cocoseg.engine.checks import ensure_ray
from cocoseg.registry import CHAMPION, alias_version, connect, download
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
    tags = champion.tags or {}
    if tags.get("variant") != cfg.model.variant or tags.get("num_classes") not in (None, str(cfg.model.num_classes)):
        log.info("champion v%s is yolov8%s-seg with %s classes; not warm-starting a %s/%d run",
                 champion.version, tags.get("variant"), tags.get("num_classes"), cfg.model.variant,
                 cfg.model.num_classes)
        return ""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    dest = storage.join(cfg.storage.root, "warm-start", f"{cfg.registry.model_name}-v{champion.version}")
    with tempfile.TemporaryDirectory(prefix="cocoseg-champion-") as tmp:
        for artifact, name in (("model.safetensors", "model.safetensors"), ("model_card.json", "model_card.json")):
            local = download(uri, f"models:/{cfg.registry.model_name}/{champion.version}/artifacts/{artifact}", tmp)
            storage.write_bytes(storage.join(dest, name), Path(local).read_bytes())
    return dest if storage.is_s3(dest) else os.path.abspath(dest)


def _champion_on(cfg: JobConfig, champion: Any, snapshot: str, fresh: dict[str, list[int]]) -> dict[str, Any]:
    """The champion's served ONNX on the new and changed images alone, per split (before training)."""
    from cocoseg.batch.served import measure_served
    from cocoseg.registry.register import served_files

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    folder = served_files(cfg, uri, cfg.registry.model_name, str(champion.version))
    out = {}
    for split, ids in sorted(fresh.items()):
        doc = measure_served(cfg, folder, snapshot, split, ("onnx",), only_ids=ids)
        m = doc["backends"]["onnx"]["metrics"]
        out[split] = {"images": doc["images"], "mask_ap50_95": m["val/mask_ap50_95"], "box_ap50_95": m["val/box_ap50_95"]}
    return {"version": str(champion.version), "by_split": out}


def _what_changed(cfg: JobConfig, manifest: Manifest, champion: Any) -> dict[str, Any] | None:
    """The new snapshot against the champion's (diff.json): images added / removed / changed,
    instances per class before and after, and the champion's AP on the new and changed images."""
    from cocoseg.data.diff import diff_snapshots
    from cocoseg.data.schema import snapshot_uri

    old_id = str((champion.tags or {}).get("data_snapshot", "")) if champion is not None else ""
    new_uri, new_id = manifest.snapshot_uri, manifest.snapshot_id
    if not old_id or old_id == new_id:
        return None
    root = new_uri.rstrip("/").rsplit("/snapshots/", 1)[0]
    old_uri = snapshot_uri(root, old_id)
    if not storage.exists(storage.join(old_uri, "_manifest.json")):
        log.warning("champion v%s was trained on snapshot %s, which is not under %s: no data diff",
                    champion.version, old_id, root)
        return None
    diff = diff_snapshots(old_uri, new_uri)
    diff["champion_on_new"] = _champion_on(cfg, champion, new_uri, diff["new_or_changed"]) \
        if diff["new_or_changed"] else None
    diff["file"] = storage.join(cfg.storage.root, "retrain", new_id, "diff.json")
    storage.write_json(diff["file"], diff)
    log.info("retrain: %s", _diff_line(diff))
    return diff


def _diff_line(diff: dict[str, Any]) -> str:
    line = (f"snapshot {diff['new_snapshot']} vs the champion's {diff['old_snapshot']}: {diff['added']} images added, "
            f"{diff['removed']} removed, {diff['changed']} changed; instances {diff['instances_before']} -> "
            f"{diff['instances_after']}")
    champ = diff.get("champion_on_new")
    if champ:
        parts = [f"{s}: {v['images']} images, mask AP50-95 {v['mask_ap50_95']:.4f}, box {v['box_ap50_95']:.4f}"
                 for s, v in champ["by_split"].items()]
        line += f"; champion v{champ['version']} on the new and changed images before training: " + "; ".join(parts)
    return line


def _log_diff(cfg: JobConfig, run_id: str, diff: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root))
    client.log_dict(run_id, diff, "diff.json")
    for key in ("added", "removed", "changed"):
        client.log_metric(run_id, f"data/images_{key}", float(diff[key]))
    for split, v in ((diff.get("champion_on_new") or {}).get("by_split") or {}).items():
        client.log_metric(run_id, f"champion_on_new/{split}/mask_ap50_95", float(v["mask_ap50_95"]))


def retrain(cfg: JobConfig) -> dict[str, Any]:
    """One retraining round; returns what happened (``action``: ``skipped`` or ``trained``)."""
    from cocoseg.engine.trainer import train
    from cocoseg.export.job import export_checkpoint
    from cocoseg.ingest.job import ingest
    from cocoseg.registry.register import register

    started = time.perf_counter()
    ensure_ray(cfg.scaling, cfg.data, cfg.validation)  # sized for training; ingest alone would size a local Ray for itself
    ingested = ingest(cfg)
    manifest = ingested.manifest
    snapshot_id = manifest.snapshot_id
    champion = _champion(cfg)
    seen = champion is not None and snapshot_id in (champion.tags or {}).get("data_snapshot", "")
    if ingested.skipped and seen and not cfg.retrain.force:
        msg = (f"source unchanged (snapshot {snapshot_id}) and champion v{champion.version} was trained on it: "
               "nothing to retrain (retrain.force=true trains anyway)")
        print(msg)
        return {"action": "skipped", "snapshot": snapshot_id, "champion": str(champion.version), "reason": msg}
    diff = _what_changed(cfg, manifest, champion)
    values = {"train.snapshot": manifest.snapshot_uri}
    if champion is not None and cfg.retrain.warm_start:
        weights = _warm_start(cfg, champion)
        if weights:
            values["model.weights"] = weights
            log.info("warm start from champion v%s (%s)", champion.version, weights)
    cfg = with_values(cfg, values)
    trained = train(cfg)
    export_dir = storage.join(cfg.storage.root, "exports", os.path.basename(trained.run_dir.rstrip("/")))
    # No separate evaluate step: register evaluates the eager model and the served artifacts in one
    # pass on the new snapshot (wherever it lives) and gates on those numbers.
    if diff is not None:
        _log_diff(cfg, trained.mlflow_run_id, diff)
    export_checkpoint(cfg, trained.best_weights, export_dir, train_run_id=trained.mlflow_run_id,
                      snapshot=manifest.snapshot_uri)
    # the served artifacts are evaluated on the new snapshot (it may live outside storage.root)
    reg = register(cfg, export_dir, snapshot=manifest.snapshot_uri)
    out = {"action": "trained", "snapshot": snapshot_id, "mlflow_run_id": trained.mlflow_run_id,
           "version": str(reg.version), "decision": reg.decision.decision, "reason": reg.decision.reason,
           "seconds": round(time.perf_counter() - started, 1)}
    if diff is not None:
        out["diff"] = {k: diff[k] for k in ("file", "added", "removed", "changed", "instances_before",
                                            "instances_after", "champion_on_new")}
        print(f"retrain: data: {_diff_line(diff)}")
    print(f"retrain: {reg.name} v{reg.version} {reg.decision.decision}: {reg.decision.reason}")
    return out
