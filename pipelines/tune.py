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

from cocoseg import jobs
from cocoseg.tune.tuner import TuneResult, run_search

__all__ = ["TuneResult", "build_parser", "main", "run"]

run = run_search  # the work: cocoseg.tune.tuner.run_search(cfg)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/tune.py``, as ``cocoseg tune`` has it."""
    return jobs.build_parser("tune", "python -m pipelines.tune", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
