"""The retrain job: one retraining round (ingest, train, evaluate, export, register + gate).

    retrain [--config FILE] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

from .args import add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "one retraining round: ingest, train, evaluate, export, register + gate"
DESCRIPTION = ("Against the local Ray, or the cluster in RAY_ADDRESS: a new snapshot when the source changed, a "
               "training run warm-started from the champion, its evaluation, export and registration (champion "
               "only if it beats the current one). Nothing is trained when the source is unchanged and the "
               "champion saw this snapshot (retrain.force=true trains anyway).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, example="ingest.source=s3://data/coco")


def run_from_args(args: argparse.Namespace) -> int:
    cfg = job_config(args)  # a bad key: one line before Ray loads
    from cocoseg.retrain import retrain

    print(json.dumps(retrain(cfg), indent=2, default=str))
    return 0
