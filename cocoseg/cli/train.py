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

    s = sub.add_parser("sync-mlflow", help="complete a run in MLflow from its journal (after an outage)",
                       description="Creates the MLflow run if MLflow was down when training started, sends "
                                   "the epochs journaled while it was unreachable and, once training ended, "
                                   "the end-of-run artifacts, the logged model and the final status. "
                                   "Idempotent: what MLflow already holds is not sent again.")
    s.add_argument("run_dir", help="the run folder (or s3:// URI) holding tracking/metrics.jsonl")
    s.add_argument("--tracking-uri", default="", help="send here instead of the URI recorded in the journal")
    s.set_defaults(func=_sync)


def _train(args: argparse.Namespace) -> int:
    from cocoseg.config import config_path, load_config

    cfg = load_config(config_path(args.config), args.overrides)  # a bad key: one line before torch and Ray load
    from cocoseg.engine.trainer import train

    result = train(cfg)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from cocoseg import storage, tracking
    from cocoseg.utils import redact

    journal = tracking.journal_uri(args.run_dir)
    if not storage.exists(journal) and not storage.exists(tracking.run_record_uri(args.run_dir)):
        raise UserError(f"{args.run_dir}: no metrics journal at {journal}; pass the run folder that "
                        "training printed (it holds tracking/metrics.jsonl)")
    uri = tracking.adopt_credentials(args.tracking_uri) if args.tracking_uri else ""
    done = tracking.complete_run(args.run_dir, uri)
    state = (f"FINISHED in MLflow with {len(done.artifacts)} artifact(s)" if done.artifacts
             else "complete in MLflow" if done.finished else "training has not ended yet")
    print(redact(f"{journal}: sent {done.sent} epoch(s), {done.present} already present; run {done.run_id} {state}"))
    return 0
