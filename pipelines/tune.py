"""Hyperparameter search on Ray Tune: every trial is the train job (pipelines.train) on one draw of ``tune.space``.

    ray job submit --address http://<head>:8265 --working-dir . -- python -m pipelines.tune \\
        --config pipelines/configs/tune.yaml train.snapshot=s3://bucket/cocoseg/snapshots/<id> \\
        storage.root=s3://bucket/cocoseg tune.name=lr-sweep tune.num_trials=16 tune.max_concurrent_trials=4

(or ``cocoseg tune ...``). Each trial's driver function builds and fits the same ``TorchTrainer``
as ``pipelines.train.run`` (``tune.epochs`` epochs, the run ``<storage.root>/runs/<name>-<trial
id>``), reporting every epoch to Tune through ``TuneReportCallback``; ASHA stops the weaker trials
on val mask AP50-95, ties broken by the lower train loss (``tune.grace_period``,
``tune.reduction_factor``). The space, the keys it names and ``tune.max_concurrent_trials``
against the cluster are checked before any trial starts.

Reads the snapshot (``train.snapshot``). Writes ``<storage.root>/tune/<name>/``: Tune's search
state, ``search.json``, ``results.{csv,json}``, ``metric_vs_params.png`` and ``best.yaml`` (the
best trial's config at ``train.epochs``, ready for ``pipelines.train``); one run folder per trial
under ``<storage.root>/runs/``; in MLflow a parent run with one nested run per trial.
``tune.train_best=true`` then trains, exports and registers ``best.yaml`` (challenger).

Rerun the same command: a resume (``Tuner.restore``). Finished trials are not trained again: a
trial restarted after a lost driver reports the epochs its run journaled, then its run resumes
from its newest checkpoint (or, already finished, is not started).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg.config import ConfigError, config_path, load_config
from cocoseg.tune.tuner import TuneResult, run_search
from cocoseg.utils import UserError, redact, set_verbose

__all__ = ["TuneResult", "main", "run"]

run = run_search  # the work: cocoseg.tune.tuner.run_search(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="job config YAML (e.g. pipelines/configs/tune.yaml)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output too")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tune.num_trials=8")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)
    try:
        result = run(load_config(config_path(args.config), args.overrides))
    except (ConfigError, UserError) as exc:
        print(f"tune: error: {exc}", file=sys.stderr)
        return 2
    print(redact(f"best trial {result.best['trial_id']}: mask AP50-95 {result.best['best_mask_ap50_95']:.4f}; "
                 f"config {result.best_config}; MLflow parent run {result.parent_run_id} at {result.tracking_uri}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
