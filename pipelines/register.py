"""Register job: one export directory -> one MLflow Model Registry version, then the gate.

    ray job submit --working-dir . -- python -m pipelines.register \\
        --export s3://bucket/cocoseg/exports/<run> --name cocoseg-yolov8-seg \\
        tracking.tracking_uri=https://mlflow.example.internal registry.promotion_margin=0.005

(or ``cocoseg register EXPORT_DIR --name NAME``). Credentials for a basic-auth server come from
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in the job's environment.

Reads: a committed export directory (``cocoseg.bundle``: every file checked against the
manifest's SHA-256; local or ``s3://``). Writes: an MLflow run, a logged pyfunc model and one new
version of ``--name`` (default ``registry.model_name``) with tags; aliases ``challenger`` and,
when the gate passes, ``champion``. Rerun: registers another version (versions are cheap and
immutable; the gate decides again). A failure leaves no version behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import storage
from cocoseg.config import JobConfig, load_config
from cocoseg.registry import Registration, register_export, resolve_tracking_uri
from cocoseg.utils import UserError, get_logger
from pipelines import config_path

__all__ = ["main", "run"]

log = get_logger("pipelines.register")


def run(cfg: JobConfig, export_dir: str, name: str | None = None) -> Registration:
    """Register ``export_dir``; returns the version and the gate's decision."""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    with storage.local_copy(export_dir) as local:
        result = register_export(local, name=name or cfg.registry.model_name, tracking_uri=uri,
                                 experiment=cfg.tracking.experiment, metric=cfg.registry.gate_metric,
                                 margin=cfg.registry.promotion_margin, same_snapshot=cfg.registry.same_snapshot)
    log.info("%s v%s: %s (%s)", result.name, result.version, result.decision.decision, result.decision.reason)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.register", description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory written by pipelines.export")
    parser.add_argument("--name", default=None, help="registered model name (default registry.model_name)")
    parser.add_argument("--config", default=None, help="job config YAML")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides), args.export, args.name)
    except (UserError, ValueError) as exc:
        print(f"pipelines.register: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
