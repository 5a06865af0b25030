"""Register one export directory as an MLflow Model Registry version and run the promotion gate,
evaluating the export first when it carries no evaluation provenance.

The job ``pipelines.register`` runs :func:`register` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cocoseg import bundle, storage
from cocoseg.config import JobConfig
from cocoseg.registry import Registration, register_export
from cocoseg.tracking import resolve_tracking_uri
from cocoseg.utils import get_logger

__all__ = ["register"]

log = get_logger(__name__)


def _card_snapshot(cfg: JobConfig, card: dict) -> str:
    """The card's data snapshot under ``storage.root`` when it exists there, else ""."""
    from cocoseg.data.schema import snapshot_uri

    snapshot_id = str(card.get("data_snapshot") or "")
    if not snapshot_id:
        return ""
    uri = snapshot_uri(cfg.storage.root, snapshot_id)
    return uri if storage.exists(storage.join(uri, "_manifest.json")) else ""


def _evaluated_copy(cfg: JobConfig, export_dir: str, local: Path, snapshot: str, dest: Path) -> Path:
    """``local`` (the export) copied to ``dest`` with the evaluate job's metrics, re-committed."""
    from cocoseg.batch import evaluate

    log.info("%s has no evaluation provenance: evaluating it on %s first", export_dir, snapshot)
    doc = evaluate.evaluate(cfg, export_dir, snapshot, out=str(dest.parent / "eval"))
    shutil.copytree(local, dest, ignore=shutil.ignore_patterns(bundle.MANIFEST))
    original = json.loads((local / bundle.METRICS).read_text())
    (dest / bundle.METRICS).write_text(json.dumps({**original, **evaluate.export_metrics(doc)}, indent=2, sort_keys=True))
    manifest = json.loads((local / bundle.MANIFEST).read_text())
    bundle.write_manifest(dest, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    return dest


def register(cfg: JobConfig, export_dir: str, name: str | None = None, snapshot: str = "") -> Registration:
    """Register ``export_dir`` (evaluated first when it carries no evaluation); returns the version and
    the gate's decision."""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    with storage.local_copy(export_dir) as local, tempfile.TemporaryDirectory(prefix="cocoseg-register-") as tmp:
        source = Path(local)
        b = bundle.open_bundle(source)
        if "eval.protocol_hash" not in b.metrics:
            snapshot = snapshot or _card_snapshot(cfg, b.card)
            if snapshot:
                try:
                    source = _evaluated_copy(cfg, export_dir, source, snapshot, Path(tmp) / "export")
                except Exception as exc:  # noqa: BLE001 (registration must not depend on an evaluation cluster)
                    log.error("evaluating %s on %s failed (%s: %s); registering its own metrics, which the gate "
                              "will not compare with an evaluated champion", export_dir, snapshot,
                              type(exc).__name__, exc)
            else:
                log.warning("%s carries no evaluation and its data snapshot is not under storage.root: registering "
                            "its own metrics; the gate will not promote it over an evaluated champion", export_dir)
        result = register_export(source, name=name or cfg.registry.model_name, tracking_uri=uri,
                                 experiment=cfg.tracking.experiment, metric=cfg.registry.gate_metric,
                                 margin=cfg.registry.promotion_margin, same_snapshot=cfg.registry.same_snapshot)
    log.info("%s v%s: %s (%s)", result.name, result.version, result.decision.decision, result.decision.reason)
    return result
