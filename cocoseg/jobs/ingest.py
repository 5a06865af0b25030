"""The ingest job: a COCO or YOLO source -> an immutable, sharded Parquet snapshot (Ray Data).

    ingest [SOURCE [DEST]] [--config FILE] [key=value ...]

SOURCE sets ``ingest.source`` and DEST ``ingest.dest`` (snapshots go to ``DEST/snapshots/<id>``);
both may be given as overrides instead (``ingest.source=s3://bucket/coco``), as the RayJob does.
"""

from __future__ import annotations

import argparse

from .args import add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "ingest COCO-Seg into a Parquet snapshot (Ray Data)"
DESCRIPTION = ("Read a COCO or YOLO source and write DEST/snapshots/<id>/ (Parquet shards, _quarantine.parquet, "
               "_manifest.json). A rerun over an unchanged source is a no-op that says so.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default="", metavar="SOURCE",
                        help="COCO folder, s3:// prefix, or a dataset YAML (default ingest.source)")
    parser.add_argument("dest", nargs="?", default="", metavar="DEST",
                        help="snapshot root (folder or s3://; default ingest.dest, else storage.root)")
    add_common(parser, example="ingest.shard_bytes=1000000")


def run_from_args(args: argparse.Namespace) -> int:
    from cocoseg.config import to_dict
    from cocoseg.ingest.job import ingest
    from cocoseg.utils import get_logger

    first = [*([f"ingest.source={args.source}"] if args.source else []),
             *([f"ingest.dest={args.dest}"] if args.dest else [])]
    cfg = job_config(args, first)
    get_logger("cocoseg.jobs.ingest").info("config: %s", to_dict(cfg)["ingest"])
    return 0 if ingest(cfg) else 1
