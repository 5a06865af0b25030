"""The tune job: a hyperparameter search whose trials are train runs (Ray Tune, ASHA).

    tune [--config FILE] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

from .args import add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "search hyperparameters: Ray Tune trials of the train job, ASHA early stopping"
DESCRIPTION = ("Search tune.space against the local Ray, or the cluster in RAY_ADDRESS, e.g. "
               "'tune.space={train.lr0: {loguniform: [0.001, 0.02]}}' tune.num_trials=8. "
               "Rerun the same command to resume.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, example="tune.num_trials=8")


def run_from_args(args: argparse.Namespace) -> int:
    from cocoseg.utils import redact

    cfg = job_config(args)
    from cocoseg.tune.tuner import run_search

    result = run_search(cfg)
    print(redact(f"best trial {result.best['trial_id']}: mask AP50-95 {result.best['best_mask_ap50_95']:.4f}; "
                 f"config {result.best_config}; MLflow parent run {result.parent_run_id} at {result.tracking_uri}"))
    print(redact(json.dumps({"best_config": result.best_config, "best": result.best,
                             "parent_run_id": result.parent_run_id, "tune_dir": result.tune_dir,
                             "trained": result.trained}, indent=2, default=str)))
    return 0
