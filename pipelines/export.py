"""Export job: a trained checkpoint -> a verified export directory (ONNX, TensorRT, latency).

    ray job submit --working-dir . --entrypoint-num-gpus 1 -- python -m pipelines.export \\
        --weights s3://bucket/cocoseg/runs/<run>/best --out s3://bucket/cocoseg/exports/<run> \\
        --config pipelines/configs/export.yaml

(or ``cocoseg export WEIGHTS --out DIR [--formats onnx,engine]``; ``python -m pipelines.export``
locally). ``--entrypoint-num-gpus 1`` places the driver on a GPU node so the TensorRT engine is
built for that GPU; without ``tensorrt`` or a CUDA device the job says so and exports ONNX only.

Reads: a cocoseg checkpoint folder (``model.safetensors`` + ``model_card.json``, local or
``s3://``) and optionally ``--metrics FILE`` (JSON; else ``<weights>/metrics.json`` if present,
else the card's metrics). Writes: the ``cocoseg.bundle`` layout under ``--out``, ``export.json``
last. Rerun: exports again and replaces the folder's files (the manifest is removed first, so an
interrupted rerun never looks finished). A parity failure fails the job and commits nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cocoseg import bundle, storage
from cocoseg.config import JobConfig, load_config, to_dict, with_values
from cocoseg.export import export_bundle
from cocoseg.utils import UserError, get_logger, redact
from pipelines import config_path

__all__ = ["main", "run"]

log = get_logger("pipelines.export")


def _metrics(weights: str, card_metrics: dict[str, Any], metrics_file: str | None) -> dict[str, Any]:
    """``--metrics`` (an evaluate job's metrics.json is flattened with its provenance), else
    ``<weights>/eval-val/metrics.json`` or ``<weights>/metrics.json``, else the card's metrics."""
    from pipelines.evaluate import METRICS_FILE, export_metrics

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


def run(cfg: JobConfig, weights: str, out: str, metrics_file: str | None = None,
        train_run_id: str = "") -> dict[str, Any]:
    """Export the checkpoint ``weights`` into ``out``; returns the manifest.

    ``train_run_id`` (the MLflow run that trained the weights) becomes a registry version tag.
    """
    from cocoseg.model.weights import WEIGHTS_FILE, load_checkpoint

    model, card = load_checkpoint(weights)
    if not cfg.export.imgsz:
        cfg = with_values(cfg, {"export.imgsz": card.imgsz})  # the card's, recorded as resolved
    metrics = _metrics(weights, card.metrics, metrics_file)
    cache = cfg.export.timing_cache_dir or storage.join(cfg.storage.root, "cache", "tensorrt")
    with storage.local_copy(storage.join(weights, WEIGHTS_FILE)) as weights_file, \
            tempfile.TemporaryDirectory(prefix="cocoseg-export-") as tmp:
        local_out = Path(tmp) / "export" if storage.is_s3(out) else Path(out)
        manifest = export_bundle(model, weights_file=weights_file, card=card.to_dict(), out_dir=local_out,
                                 cfg=cfg.export, num_classes=card.num_classes, metrics=metrics,
                                 resolved_config=redact(to_dict(cfg)), timing_cache_dir=cache,
                                 train_run_id=train_run_id)
        if storage.is_s3(out):
            storage.delete(storage.join(out, bundle.MANIFEST))
            for name in sorted(manifest["files"]):  # the manifest goes last: it commits the export
                storage.write_bytes(storage.join(out, name), (local_out / name).read_bytes())
            storage.write_bytes(storage.join(out, bundle.MANIFEST), (local_out / bundle.MANIFEST).read_bytes())
    log.info("export of %s written to %s", weights, out)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.export", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint folder (local or s3://)")
    parser.add_argument("--out", required=True, help="export directory (local or s3://)")
    parser.add_argument("--metrics", default=None, help="evaluation metrics JSON to carry into the export")
    parser.add_argument("--train-run-id", default="", help="MLflow run id that trained the weights")
    parser.add_argument("--config", default=None, help="job config YAML")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. export.imgsz=320")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides), args.weights, args.out, args.metrics, args.train_run_id)
    except (UserError, ValueError) as exc:
        print(f"pipelines.export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
