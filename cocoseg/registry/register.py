"""Register one export directory as an MLflow Model Registry version and run the promotion gate on
evidence: the export is evaluated as served (eager model and served ONNX in one pass, docs/promotion.md)
whenever its data snapshot is at hand, and a champion measured elsewhere is re-evaluated there.

The job ``pipelines.register`` runs :func:`register` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cocoseg import bundle, storage
from cocoseg.config import JobConfig
from cocoseg.registry import Registration, download, register_export
from cocoseg.tracking import resolve_tracking_uri
from cocoseg.utils import get_logger

__all__ = ["register", "served_files"]

log = get_logger(__name__)


def _card_snapshot(cfg: JobConfig, card: dict) -> str:
    """The card's data snapshot under ``storage.root`` when it exists there, else ""."""
    from cocoseg.data.schema import snapshot_uri

    snapshot_id = str(card.get("data_snapshot") or "")
    if not snapshot_id:
        return ""
    uri = snapshot_uri(cfg.storage.root, snapshot_id)
    return uri if storage.exists(storage.join(uri, "_manifest.json")) else ""


def _eval_snapshot(cfg: JobConfig, b: bundle.ExportBundle) -> str:
    """The snapshot the export was evaluated on (``eval.snapshot_id``) or trained on (the card's), when
    it exists under ``storage.root``; else ""."""
    for snapshot_id in (b.metrics.get("eval.snapshot_id"), b.card.get("data_snapshot")):
        found = _card_snapshot(cfg, {"data_snapshot": snapshot_id}) if snapshot_id else ""
        if found:
            return found
    return ""


def _served_metrics(doc: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure_served`'s document -> flat metrics.json keys: the eager ``val/*`` numbers with
    their provenance, and per served artifact ``served/<format>/*`` with the delta against eager."""
    from cocoseg.batch.evaluate import export_metrics
    from cocoseg.batch.served import EAGER

    backends = doc["backends"]
    eager = backends[EAGER]["metrics"]
    out = export_metrics({**doc, "metrics": eager})
    out["eval.scorer"] = doc["scorer"]
    formats = [b for b in backends if b != EAGER]
    out["served.formats"] = ",".join(formats)
    for fmt in formats:
        served = backends[fmt]["metrics"]
        for kind in ("box", "mask"):
            for stat in ("ap50_95", "ap50"):
                out[f"served/{fmt}/{kind}_{stat}"] = served[f"val/{kind}_{stat}"]
            out[f"served/{fmt}/delta_{kind}_ap50_95"] = served[f"val/{kind}_ap50_95"] - eager[f"val/{kind}_ap50_95"]
        out[f"served/{fmt}/detections"] = backends[fmt]["detections"]
    return out


def _served_copy(cfg: JobConfig, export_dir: str, local: Path, snapshot: str, dest: Path) -> Path:
    """``local`` (the export) copied to ``dest`` with the eager model's and the served artifacts'
    numbers on ``snapshot`` (one Ray Data pass) and the served ONNX's per-image matches, re-committed."""
    from cocoseg.batch.served import EAGER, measure_served
    from cocoseg.cluster import start_ray
    from cocoseg.metrics.bootstrap import save_matches

    b = bundle.open_bundle(local)
    backends = [EAGER, "onnx"] + (["onnx-int8"] if b.has(bundle.ONNX_INT8) else [])
    log.info("evaluating %s (%s) on %s/%s", export_dir, ", ".join(backends), snapshot, cfg.evaluate.split)
    start_ray(log_to_driver=False)  # RAY_ADDRESS (ray.init reads it), else local; no-op when connected
    # Ray workers start in other folders (and on other nodes): a local path must be absolute
    doc = measure_served(cfg, export_dir if storage.is_s3(export_dir) else os.path.abspath(export_dir), snapshot,
                         cfg.evaluate.split, backends)
    shutil.copytree(local, dest, ignore=shutil.ignore_patterns(bundle.MANIFEST, bundle.MATCHES))
    metrics = {**b.metrics, **_served_metrics(doc)}
    if b.has(bundle.ENGINE):
        metrics["served.reason"] = "model.engine not evaluated: the TensorRT backend needs a CUDA device"
    (dest / bundle.METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    save_matches(dest / bundle.MATCHES, doc["backends"]["onnx"]["matches"])
    manifest = json.loads((local / bundle.MANIFEST).read_text())
    bundle.write_manifest(dest, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    for fmt in backends[1:]:
        log.info("served %s: mask AP50-95 %.4f (eager %.4f), box %.4f (eager %.4f)", fmt,
                 metrics[f"served/{fmt}/mask_ap50_95"], metrics["val/mask_ap50_95"],
                 metrics[f"served/{fmt}/box_ap50_95"], metrics["val/box_ap50_95"])
    return dest


def served_files(cfg: JobConfig, uri: str, name: str, version: str) -> str:
    """Version ``version``'s served ONNX and model card copied to ``<storage.root>/gate/NAME-vN`` (every
    Ray worker reads it there); returns that folder's URI (absolute when local)."""
    dest = storage.join(cfg.storage.root, "gate", f"{name}-v{version}")
    with tempfile.TemporaryDirectory(prefix="cocoseg-champion-") as tmp:
        for file in (bundle.ONNX, bundle.CARD):
            local = download(uri, f"models:/{name}/{version}/artifacts/{file}", tmp)
            storage.write_bytes(storage.join(dest, file), Path(local).read_bytes())
    return dest if storage.is_s3(dest) else os.path.abspath(dest)


def _champion_evidence(cfg: JobConfig, uri: str, name: str, snapshot: str, ours: dict[str, Any]):
    """The gate's ``champion_evidence``: the champion's stored matches when they were measured on the
    challenger's snapshot, split, image count and protocol; else the champion's served ONNX evaluated
    there now (files copied under ``storage.root/gate/``, readable by every Ray worker)."""
    from cocoseg.batch.served import measure_served
    from cocoseg.cluster import start_ray
    from cocoseg.metrics.bootstrap import load_matches

    from .gate import PROVENANCE_TAGS

    def fetch(champion: Any):
        tags = champion.tags or {}
        theirs = {k: str(tags.get(k, "")) for k in PROVENANCE_TAGS}
        mine = {k: str(int(ours[k]) if k == "eval.images" else ours.get(k, "")) for k in PROVENANCE_TAGS}
        base = f"models:/{name}/{champion.version}/artifacts"
        with tempfile.TemporaryDirectory(prefix="cocoseg-champion-") as tmp:
            if theirs == mine and tags.get("eval.matches") == "true":
                path = download(uri, f"{base}/{bundle.MATCHES}", tmp)
                return load_matches(path), {"gate.champion_evidence": f"stored matches of v{champion.version}"}
            where = f"{theirs['eval.snapshot_id'] or '?'}/{theirs['eval.split'] or '?'} ({theirs['eval.images'] or '?'} images)"
            if not snapshot:
                return None, {"gate.champion_evidence": f"champion measured on {where}; no snapshot to re-evaluate it on"}
        dest = served_files(cfg, uri, name, str(champion.version))
        log.info("champion v%s was measured on %s, the challenger on %s/%s: evaluating the champion there",
                 champion.version, where, mine["eval.snapshot_id"], mine["eval.split"])
        start_ray(log_to_driver=False)
        doc = measure_served(cfg, dest, snapshot, mine["eval.split"], ("onnx",))
        served = doc["backends"]["onnx"]["metrics"]
        return doc["backends"]["onnx"]["matches"], {
            "gate.champion_reevaluated": "true",
            "gate.champion_evidence": f"v{champion.version} re-evaluated on {doc['snapshot_id']}/{doc['split']} "
                                      f"({doc['images']} images; its stored numbers: {where})",
            "gate.champion_protocol_hash": doc["protocol_hash"],
            "gate.champion_served_mask_ap50_95": f"{served['val/mask_ap50_95']:.6f}",
            "gate.champion_served_box_ap50_95": f"{served['val/box_ap50_95']:.6f}"}

    return fetch


def register(cfg: JobConfig, export_dir: str, name: str | None = None, snapshot: str = "") -> Registration:
    """Register ``export_dir`` after evaluating it as served on ``snapshot`` (default: the snapshot it
    was evaluated or trained on, under ``storage.root``); returns the version and the gate's decision."""
    from .evidence import GatePolicy

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    name = name or cfg.registry.model_name
    with storage.local_copy(export_dir) as local, tempfile.TemporaryDirectory(prefix="cocoseg-register-") as tmp:
        source = Path(local)
        b = bundle.open_bundle(source)
        snapshot = snapshot or _eval_snapshot(cfg, b)
        if snapshot:
            try:
                source = _served_copy(cfg, export_dir, source, snapshot, Path(tmp) / "export")
            except Exception as exc:  # noqa: BLE001 (registration must not depend on an evaluation cluster)
                log.error("evaluating %s on %s failed (%s: %s); registering its own metrics, which the gate "
                          "will not compare with an evaluated champion", export_dir, snapshot,
                          type(exc).__name__, exc)
        else:
            log.warning("%s names no data snapshot under storage.root (pass --snapshot): registering its own "
                        "metrics; the gate will not promote it over an evaluated champion", export_dir)
        metrics = bundle.open_bundle(source).metrics
        evidence = _champion_evidence(cfg, uri, name, snapshot, metrics) if "eval.protocol_hash" in metrics else None
        result = register_export(source, name=name, tracking_uri=uri,
                                 experiment=cfg.tracking.experiment, metric=cfg.registry.gate_metric,
                                 margin=cfg.registry.promotion_margin, same_snapshot=cfg.registry.same_snapshot,
                                 policy=GatePolicy.from_config(cfg.registry), champion_evidence=evidence)
    log.info("%s v%s: %s (%s)", result.name, result.version, result.decision.decision, result.decision.reason)
    return result
