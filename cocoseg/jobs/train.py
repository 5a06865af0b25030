"""The train job: a YOLOv8-seg variant on a Parquet snapshot with Ray Train.

    train [--config FILE] [--parent-run-id ID] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

from .args import add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "train a YOLOv8-seg variant on a Parquet snapshot (Ray Train)"
DESCRIPTION = ("Train against the local Ray, or the cluster in RAY_ADDRESS; prints the MLflow run and the best "
               "weights, then the result as JSON. Rerun with the same tracking.run_name: a resume.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parent-run-id", default="", help="nest the MLflow run under this run")
    add_common(parser, example="train.epochs=3")


def run_from_args(args: argparse.Namespace) -> int:
    from cocoseg.utils import redact

    cfg = job_config(args)  # a bad key: one line before torch and Ray load
    from cocoseg.engine.trainer import train

    result = train(cfg, parent_run_id=args.parent_run_id)
    print(redact(f"MLflow run {result.mlflow_run_id} at {result.tracking_uri}; best weights {result.best_weights}"))
    print(redact(json.dumps(result.to_dict(), indent=2)))
    return 0
