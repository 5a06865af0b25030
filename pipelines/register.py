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
import sys
from collections.abc import Sequence

from cocoseg.config import config_path, load_config
from cocoseg.registry.register import register
from cocoseg.utils import UserError

__all__ = ["main", "run"]

run = register  # the work: cocoseg.registry.register.register(cfg, export_dir, name=None, snapshot="")


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
