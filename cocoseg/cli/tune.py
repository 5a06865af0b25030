"""CLI sub-command: tune (hyperparameter search over the train job)."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    p = sub.add_parser("tune", help="search hyperparameters: Ray Tune trials of the train job, ASHA early stopping",
                       description="Runs pipelines.tune against the local Ray, or the cluster in RAY_ADDRESS. "
                                   "Example: cocoseg tune --config pipelines/configs/tune.yaml "
                                   "train.snapshot=.cocoseg/snapshots/<id> tune.num_trials=8 "
                                   "'tune.space={train.lr0: {loguniform: [0.001, 0.02]}}'. "
                                   "Rerun the same command to resume.")
    p.add_argument("--config", help="YAML job config with a tune section (space, num_trials, ...)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tune.num_trials=8")
    p.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int:
    from cocoseg.config import config_path, load_config
    from cocoseg.tune.tuner import run_search

    result = run_search(load_config(config_path(args.config), args.overrides))
    print(json.dumps({"best_config": result.best_config, "best": result.best, "parent_run_id": result.parent_run_id,
                      "tune_dir": result.tune_dir, "trained": result.trained}, indent=2, default=str))
    return 0
