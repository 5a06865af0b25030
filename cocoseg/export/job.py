"""Export a trained checkpoint (local or ``s3://``) into a verified export directory (ONNX,
TensorRT where it can be built, latency), with the evaluated metrics carried in.

The job ``pipelines.export`` runs :func:`export_checkpoint` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cocoseg import bundle, storage
from cocoseg.config import JobConfig, to_dict, with_values
from cocoseg.config_checks import absolute, prepare, ready, require
from cocoseg.export import export_bundle
from cocoseg.utils import UserError, get_logger, redact

__all__ = ["export_checkpoint"]

log = get_logger(__name__)


def _metrics(weights: str, card_metrics: dict[str, Any], metrics_file: str | None) -> dict[str, Any]:
    """``--metrics`` (an evaluate job's metrics.json is flattened with its provenance), else
    ``<weights>/eval-val/metrics.json`` or ``<weights>/metrics.json``, else the card's metrics."""
    from cocoseg.batch.evaluate import METRICS_FILE, export_metrics

    def read(uri: str) -> dict[str, Any]:
        doc = dict(storage.read_json(uri))
        return export_metrics(doc) if "protocol_hash" in doc and "metrics" in doc else doc

    evaluated = storage.join(weights, "eval-val", METRICS_FILE)
    if not metrics_file and storage.exists(evaluated):
        metrics_file = evaluated
    if metrics_file:
        try:
            return read(metrics_file)
        except FileNotFoundError:
            raise UserError(f"metrics file {metrics_file} does not exist") from None
        except ValueError as exc:
            raise UserError(f"{metrics_file}: not a JSON object of metrics ({exc})") from None
    beside = storage.join(weights, "metrics.json")
    if storage.exists(beside):
        return read(beside)
    return dict(card_metrics)


def _calibration(cfg: JobConfig, card: Any, snapshot: str):
    """(snapshot, ids, images) for ``onnx-int8``: ``snapshot``, else ``train.snapshot``, else the card's
    data snapshot under ``storage.root``; None when no INT8 graph is asked for."""
    from cocoseg.data.schema import snapshot_uri
    from cocoseg.export.quantize import calibration_batch

    if "onnx-int8" not in cfg.export.formats:
        return None
    candidates = [snapshot, cfg.train.snapshot if cfg.train.snapshot != "latest" else "",
                  snapshot_uri(cfg.storage.root, card.data_snapshot) if card.data_snapshot else ""]
    found = next((s for s in candidates if s and storage.exists(storage.join(s, "_manifest.json"))), "")
    if not found:
        raise UserError("export.formats has onnx-int8, which calibrates on train-split images, but no snapshot "
                        f"was found (tried {[c for c in candidates if c]}): pass --snapshot")
    ids, images = calibration_batch(found, count=cfg.export.calibration_images, seed=cfg.export.calibration_seed,
                                    imgsz=cfg.export.imgsz or int(card.imgsz))
    return found, ids, images


def export_checkpoint(cfg: JobConfig, weights: str, out: str, metrics_file: str | None = None,
        train_run_id: str = "", snapshot: str = "") -> dict[str, Any]:
    """Export the checkpoint ``weights`` into ``out``; returns the manifest.

    ``train_run_id`` (the MLflow run that trained the weights) becomes a registry version tag;
    ``snapshot``: where ``onnx-int8`` draws its calibration images (default: train.snapshot or the card's).
    """
    from cocoseg.model.weights import WEIGHTS_FILE, load_checkpoint

    cfg = prepare("export", cfg)  # formats vs the backends here, paths (cocoseg.config_checks)
    weights, out = absolute(weights), absolute(out)
    require(weights, "WEIGHTS", "the weights", "pass a checkpoint folder (local or s3://)")
    ready("export", cfg, {"weights": weights, "out": out, "formats": ",".join(cfg.export.formats)})
    model, card = load_checkpoint(weights)
    if not cfg.export.imgsz:
        cfg = with_values(cfg, {"export.imgsz": card.imgsz})  # the card's, recorded as resolved
    metrics = _metrics(weights, card.metrics, metrics_file)
    calibration = _calibration(cfg, card, snapshot)
    cache = cfg.export.timing_cache_dir or storage.join(cfg.storage.root, "cache", "tensorrt")
    with storage.local_copy(storage.join(weights, WEIGHTS_FILE)) as weights_file, \
            tempfile.TemporaryDirectory(prefix="cocoseg-export-") as tmp:
        local_out = Path(tmp) / "export" if storage.is_s3(out) else Path(out)
        manifest = export_bundle(model, weights_file=weights_file, card=card.to_dict(), out_dir=local_out,
                                 cfg=cfg.export, num_classes=card.num_classes, metrics=metrics,
                                 resolved_config=redact(to_dict(cfg)), timing_cache_dir=cache,
                                 train_run_id=train_run_id, calibration=calibration)
        if storage.is_s3(out):
            storage.delete(storage.join(out, bundle.MANIFEST))
            for name in sorted(manifest["files"]):  # the manifest goes last: it commits the export
                storage.write_bytes(storage.join(out, name), (local_out / name).read_bytes())
            storage.write_bytes(storage.join(out, bundle.MANIFEST), (local_out / bundle.MANIFEST).read_bytes())
    log.info("export of %s written to %s", weights, out)
    return manifest
