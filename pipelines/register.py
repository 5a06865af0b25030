"""Register job: one export directory -> one MLflow Model Registry version, then the gate.

    ray job submit --working-dir . -- python -m pipelines.register \\
        --export s3://bucket/cocoseg/exports/<run> --name cocoseg-yolov8-seg \\
        tracking.tracking_uri=https://mlflow.example.internal registry.promotion_margin=0.005

(or ``cocoseg register EXPORT_DIR --name NAME``). The gate's metric comes from the evaluate
job: an export whose ``metrics.json`` carries no evaluation provenance (``eval.protocol_hash``)
is evaluated first (``pipelines.evaluate`` on ``--snapshot``, default the card's data snapshot
under ``storage.root`` when it is there) and registered with those metrics; without a snapshot it
is registered with its own metrics and a warning (the gate then never promotes it over an
evaluated champion). Credentials for a basic-auth server come from
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in the job's environment.

Reads: a committed export directory (``cocoseg.bundle``: every file checked against the
manifest's SHA-256; local or ``s3://``). Writes: an MLflow run, a logged pyfunc model and one new
version of ``--name`` (default ``registry.model_name``) with tags; aliases ``challenger`` and,
when the gate passes, ``champion``. Rerun: registers another version (versions are cheap and
immutable; the gate decides again). A failure leaves no version behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cocoseg import bundle, storage
from cocoseg.config import JobConfig, load_config
from cocoseg.registry import Registration, register_export, resolve_tracking_uri
from cocoseg.utils import UserError, get_logger
from pipelines import config_path

__all__ = ["main", "run"]

log = get_logger("pipelines.register")


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
    from pipelines import evaluate

    log.info("%s has no evaluation provenance: evaluating it on %s first", export_dir, snapshot)
    doc = evaluate.run(cfg, export_dir, snapshot, out=str(dest.parent / "eval"))
    shutil.copytree(local, dest, ignore=shutil.ignore_patterns(bundle.MANIFEST))
    original = json.loads((local / bundle.METRICS).read_text())
    (dest / bundle.METRICS).write_text(json.dumps({**original, **evaluate.export_metrics(doc)}, indent=2, sort_keys=True))
    manifest = json.loads((local / bundle.MANIFEST).read_text())
    bundle.write_manifest(dest, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    return dest


def run(cfg: JobConfig, export_dir: str, name: str | None = None, snapshot: str = "") -> Registration:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.register", description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory written by pipelines.export")
    parser.add_argument("--name", default=None, help="registered model name (default registry.model_name)")
    parser.add_argument("--snapshot", default="", help="snapshot to evaluate on when the export has no evaluation")
    parser.add_argument("--config", default=None, help="job config YAML")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides), args.export, args.name, args.snapshot)
    except (UserError, ValueError) as exc:
        print(f"pipelines.register: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
