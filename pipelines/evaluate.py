"""Evaluate job: weights + a snapshot split -> COCO box and mask AP (per class too) -> metrics.json.

    ray job submit --working-dir . -- python -m pipelines.evaluate --config pipelines/configs/evaluate.yaml \\
        s3://bucket/cocoseg/runs/<run>/weights/best s3://bucket/cocoseg/snapshots/<id> \\
        --out s3://bucket/cocoseg/evals/<run> --parent-run <training run name>

(or ``cocoseg evaluate WEIGHTS SNAPSHOT [--split val] [--out DIR]``: the same arguments,
declared once in ``cocoseg/jobs/evaluate.py``). WEIGHTS is a checkpoint
folder (local / ``s3://``) or ``models:/NAME@ALIAS``; SNAPSHOT a snapshot folder (local /
``s3://``).

Ray Data reads the *whole* split's Parquet shards; an actor pool sized to the cluster (one actor
per ``evaluate.cpus_per_actor`` CPUs, or per GPU with ``evaluate.use_gpu``) letterboxes and runs
:class:`cocoseg.inference.DetectBatch` (the predictor training validation uses, under the
evaluation :class:`~cocoseg.inference.Protocol`); only detections (boxes, scores, classes, RLE
strings) travel to the driver, which scores them with pycocotools COCOeval (``bbox`` and
``segm``). Writes ``DIR/metrics.json`` (default ``<weights>/eval-<split>`` for a folder) holding
the metrics, per-class AP, snapshot id, split, image count and protocol hash; logs the same to
MLflow (nested under ``--parent-run``, a run id or a run name in ``tracking.experiment``).
Rerun: evaluates again and replaces ``metrics.json`` (a single-object write).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import jobs
from cocoseg.batch.evaluate import METRICS_FILE, evaluate, export_metrics

__all__ = ["METRICS_FILE", "build_parser", "export_metrics", "main", "run"]

run = evaluate  # the work: cocoseg.batch.evaluate.evaluate(cfg, weights, snapshot, split=, out=, parent_run=, log_mlflow=)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/evaluate.py``, as ``cocoseg evaluate`` has it."""
    return jobs.build_parser("evaluate", "python -m pipelines.evaluate", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
