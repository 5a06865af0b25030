"""CLI sub-commands: train, sync-mlflow."""

from __future__ import annotations

import argparse
import json

from cocoseg.utils import UserError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    p = sub.add_parser("train", help="train a YOLOv8-seg variant on a Parquet snapshot (Ray Train)",
                       description="Runs pipelines.train against the local Ray, or the cluster in "
                                   "RAY_ADDRESS. Example: cocoseg train --config pipelines/configs/train.yaml "
                                   "train.snapshot=.cocoseg/snapshots/<id> train.epochs=3 model.variant=n")
    p.add_argument("--config", help="YAML job config (sections storage/model/train/tracking)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    p.set_defaults(func=_train)

    s = sub.add_parser("sync-mlflow", help="replay a run's buffered metrics into MLflow",
                       description="Sends the epochs a training run journaled while MLflow was "
                                   "unreachable. Idempotent: epochs MLflow already holds are skipped.")
    s.add_argument("run_dir", help="the run folder (or s3:// URI) holding tracking/metrics.jsonl")
    s.add_argument("--tracking-uri", default="", help="send here instead of the URI recorded in the journal")
    s.set_defaults(func=_sync)


def _train(args: argparse.Namespace) -> int:
    from cocoseg.config import load_config
    from pipelines import train as job  # the CLI is the one layer allowed to dispatch to a job

    result = job.run(load_config(args.config, args.overrides))
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from cocoseg import storage, tracking

    journal = tracking.journal_uri(args.run_dir)
    if not storage.exists(journal):
        raise UserError(f"{args.run_dir}: no metrics journal at {journal}; pass the run folder that "
                        "training printed (it holds tracking/metrics.jsonl)")
    sent, present = tracking.sync_journal(journal, args.tracking_uri)
    print(f"{journal}: sent {sent} epoch(s), {present} already present")
    return 0
