"""The evaluate job: weights on a snapshot split -> COCO box and mask AP (per class too) -> metrics.json.

    evaluate WEIGHTS SNAPSHOT [--split val] [--out DIR] [--parent-run RUN] [--no-mlflow] [key=value ...]
"""

from __future__ import annotations

import argparse

from .args import Renamed, add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "COCO box/mask AP of weights on a snapshot split (Ray Data)"
DESCRIPTION = ("Ray Data batch inference in an actor pool, pycocotools COCOeval for boxes and masks, per-class "
               "AP; writes DIR/metrics.json and logs to MLflow unless --no-mlflow.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="WEIGHTS", help="checkpoint folder (local or s3://) or models:/NAME@ALIAS")
    parser.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot folder (local or s3://)")
    parser.add_argument("--split", default="", help="split to score (default evaluate.split, 'val')")
    parser.add_argument("--out", default="", help="folder for metrics.json (default <weights>/eval-<split>)")
    parser.add_argument("--parent-run", default="", help="MLflow run (id or name) to nest the evaluation under")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--weights", action=Renamed, new="WEIGHTS as the first positional argument")
    parser.add_argument("--snapshot", action=Renamed, new="SNAPSHOT as the second positional argument")
    add_common(parser, example="evaluate.batch_size=32")


def run_from_args(args: argparse.Namespace) -> int:
    cfg = job_config(args)
    from cocoseg.batch.evaluate import evaluate

    doc = evaluate(cfg, args.weights, args.snapshot, split=args.split, out=args.out, parent_run=args.parent_run,
                   log_mlflow=not args.no_mlflow)
    m = doc["metrics"]
    print(f"{doc['images']} images of {doc['snapshot_id']}/{doc['split']}: box AP50-95 {m['val/box_ap50_95']:.4f}, "
          f"mask AP50-95 {m['val/mask_ap50_95']:.4f} (protocol {doc['protocol_hash']})")
    return 0
