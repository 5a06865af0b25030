"""CLI sub-command: sync-mlflow (complete a run in MLflow from its journal; the train job is cocoseg.jobs.train)."""

from __future__ import annotations

import argparse

from cocoseg.utils import UserError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    s = sub.add_parser("sync-mlflow", help="complete a run in MLflow from its journal (after an outage)",
                       description="Creates the MLflow run if MLflow was down when training started, sends "
                                   "the epochs journaled while it was unreachable and, once training ended, "
                                   "the end-of-run artifacts, the logged model and the final status. "
                                   "Idempotent: what MLflow already holds is not sent again.")
    s.add_argument("run_dir", help="the run folder (or s3:// URI) holding tracking/metrics.jsonl")
    s.add_argument("--tracking-uri", default="", help="send here instead of the URI recorded in the journal")
    s.set_defaults(func=_sync)


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
