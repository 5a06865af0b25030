"""The infer job: weights on a folder, ``s3://`` prefix or snapshot of images -> Parquet predictions.

    infer WEIGHTS SOURCE --out DEST [--split NAME] [--config FILE] [key=value ...]
"""

from __future__ import annotations

import argparse

from .args import Renamed, add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "batch predictions for a folder/s3:// prefix/snapshot of images (Ray Data)"
DESCRIPTION = ("Ray Data reads the images, an actor pool runs the one predictor (EXIF orientation applied, "
               "evaluate.predict_conf) and DEST gets one Parquet file per chunk of images (one row per image; an "
               "unreadable image is a row with its error) plus _manifest.json written last. A rerun with the "
               "same weights over the same source is a no-op; a stopped run resumes where it left off.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="WEIGHTS", help="checkpoint folder (local or s3://) or models:/NAME@ALIAS")
    parser.add_argument("source", metavar="SOURCE", help="folder or s3:// prefix of images, or a snapshot folder")
    # `--out DEST key=value ...` (the documented form) once gave the overrides to --out; the
    # overrides are taken out before parsing now, and anything else after DEST still is one.
    parser.add_argument("--out", required=True, nargs="+", metavar=("DEST", "KEY=VALUE"),
                        help="output folder (local or s3://), then any overrides")
    parser.add_argument("--split", default="", help="snapshot split(s) to run on (default: every split)")
    parser.add_argument("--weights", action=Renamed, new="WEIGHTS as the first positional argument")
    parser.add_argument("--source", action=Renamed, new="SOURCE as the second positional argument")
    add_common(parser, example="evaluate.chunk_images=512")


def run_from_args(args: argparse.Namespace) -> int:
    dest, *extra = args.out
    cfg = job_config(args, then=extra)
    from cocoseg.batch.infer import infer

    infer(cfg, args.weights, args.source, dest, split=args.split)
    return 0
