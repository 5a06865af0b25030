"""Evaluate job: weights + a snapshot split -> COCO box and mask AP (per class too) -> metrics.json.

    ray job submit --working-dir . -- python -m pipelines.evaluate \\
        --weights s3://bucket/cocoseg/runs/<run>/weights/best --snapshot s3://bucket/cocoseg/snapshots/<id> \\
        --out s3://bucket/cocoseg/evals/<run> --parent-run <training run name> \\
        --config pipelines/configs/evaluate.yaml

(or ``cocoseg evaluate WEIGHTS SNAPSHOT [--split val] [--out DIR]``). WEIGHTS is a checkpoint
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

from cocoseg.batch.evaluate import METRICS_FILE, evaluate, export_metrics
from cocoseg.config import config_path, load_config
from cocoseg.utils import UserError

__all__ = ["METRICS_FILE", "export_metrics", "main", "run"]

run = evaluate  # the work: cocoseg.batch.evaluate.evaluate(cfg, weights, snapshot, split=, out=, parent_run=, log_mlflow=)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint folder (local, s3://) or models:/NAME@ALIAS")
    parser.add_argument("--snapshot", required=True, help="snapshot folder (local or s3://)")
    parser.add_argument("--split", default="", help="split to score (default evaluate.split, 'val')")
    parser.add_argument("--out", default="", help="folder for metrics.json (default <weights>/eval-<split>)")
    parser.add_argument("--parent-run", default="", help="MLflow run (id or name) to nest the evaluation under")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--config", default=None, help="job config YAML")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. evaluate.batch_size=32")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides), args.weights, args.snapshot, split=args.split,
            out=args.out, parent_run=args.parent_run, log_mlflow=not args.no_mlflow)
    except (UserError, ValueError) as exc:
        print(f"pipelines.evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
