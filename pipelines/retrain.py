"""Scheduled retraining: ingest -> (skip if nothing changed) -> train -> evaluate -> export -> register + gate.

    ray job submit --address http://<head>:8265 --working-dir . -- python -m pipelines.retrain \\
        --config pipelines/configs/retrain.yaml ingest.source=s3://data/coco ingest.dest=s3://data \\
        storage.root=s3://ckpt tracking.tracking_uri=https://mlflow.internal scaling.use_gpu=true

(run on a schedule by ``infra/k8s/retrain-cronjob.yaml`` or ``raycronjob-retrain.yaml``).

Reads: the source dataset (``ingest.source``) and the registry's ``champion`` of
``registry.model_name``. Writes: a new snapshot when the source changed, one training run
(``<storage.root>/runs/<name>``), an export (``<storage.root>/exports/<name>``) and one new
registry version that the metric gate promotes to ``champion`` only if it beats the current one.
Before training, a new snapshot is compared with the champion's (``<storage.root>/retrain/<snapshot>/diff.json``,
also on the training run in MLflow and in the summary): images added / removed / changed,
instances per class, and the champion's AP on the new and changed images alone. Register then
evaluates the eager model and the served artifacts on the new snapshot and gates on evidence
(docs/promotion.md).

Rerun: when ingest finds the source unchanged (no new snapshot) and the champion was trained on
that snapshot, the job says so and exits 0 without starting any training (``retrain.force=true``
trains anyway). Training warm-starts from the champion's weights (``retrain.warm_start``) when
the champion has the same variant and class count; otherwise it starts from ``model.weights``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import jobs
from cocoseg.retrain import retrain

__all__ = ["build_parser", "main", "run"]

run = retrain  # the work: cocoseg.retrain.retrain(cfg)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/retrain.py``, as ``cocoseg retrain`` has it."""
    return jobs.build_parser("retrain", "python -m pipelines.retrain", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
