"""``cocoseg evaluate WEIGHTS SNAPSHOT [--split val] [--out DIR]``: COCO AP of a checkpoint on a split.

The same code as the ``ray job submit`` entrypoint ``pipelines/evaluate.py`` (Ray Data batch
inference in an actor pool, pycocotools COCOeval for boxes and masks, per-class AP); writes
``DIR/metrics.json`` and logs to MLflow unless ``--no-mlflow``.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO box/mask AP of weights on a snapshot split (Ray Data)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="checkpoint folder (local or s3://) or models:/NAME@ALIAS")
    p.add_argument("snapshot", help="snapshot folder (local or s3://)")
    p.add_argument("--split", default="", help="split to score (default val)")
    p.add_argument("--out", default="", help="folder for metrics.json (default <weights>/eval-<split>)")
    p.add_argument("--parent-run", default="", help="MLflow run id or name to nest the evaluation under")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--config", default=None, help="job config YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cocoseg.batch.evaluate import evaluate
    from cocoseg.config import config_path, load_config

    doc = evaluate(load_config(config_path(args.config), args.overrides), args.weights, args.snapshot,
                  split=args.split, out=args.out, parent_run=args.parent_run, log_mlflow=not args.no_mlflow)
    m = doc["metrics"]
    print(f"{doc['images']} images of {doc['snapshot_id']}/{doc['split']}: box AP50-95 {m['val/box_ap50_95']:.4f}, "
          f"mask AP50-95 {m['val/mask_ap50_95']:.4f} (protocol {doc['protocol_hash']})")
    return 0
