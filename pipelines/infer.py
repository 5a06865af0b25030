"""Batch inference job: weights + a folder, ``s3://`` prefix or snapshot of images -> Parquet predictions.

    ray job submit --working-dir . -- python -m pipelines.infer --config pipelines/configs/evaluate.yaml \\
        --weights models:/cocoseg-yolov8-seg@champion --source s3://bucket/incoming/2026-12-04/ \\
        --out s3://bucket/predictions/2026-12-04

(or ``cocoseg infer WEIGHTS SOURCE --out DEST``). Reads: every file under SOURCE (a non-image
file is reported, not skipped) or the rows of a snapshot (``--split``, default all). Ray Data
tasks read the bytes; an actor pool (sized as the evaluate job's, ``evaluate.*``) decodes them
with the EXIF orientation applied and runs :class:`cocoseg.inference.PredictImages` (the one
predictor, predict mode: ``evaluate.predict_conf``). Writes, under DEST: one Parquet file per
chunk of ``evaluate.chunk_images`` sources (one per shard for a snapshot), one row per image
(:func:`cocoseg.inference.prediction_schema`; an unreadable image is a row whose ``error`` says
why, so read = predicted + failed), then ``_manifest.json`` last (weights SHA-256, protocol and
its hash, counts, files).

Rerun: with the same weights, protocol and source listing it is a no-op that says so; a run
killed midway resumes, keeping every part file already written (see ``cocoseg/batch/infer_io.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import storage
from cocoseg.batch.infer import infer
from cocoseg.config import ConfigError, config_path, load_config
from cocoseg.utils import UserError

__all__ = ["main", "run"]

run = infer  # the work: cocoseg.batch.infer.infer(cfg, weights, source, out, split="")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.infer", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint folder (local, s3://) or models:/NAME@ALIAS")
    parser.add_argument("--source", required=True, help="folder or s3:// prefix of images, or a snapshot folder")
    parser.add_argument("--out", required=True, help="output folder for the Parquet predictions (local or s3://)")
    parser.add_argument("--split", default="", help="snapshot split(s) to run on (default: every split)")
    parser.add_argument("--config", default=None, help="job config YAML (the evaluate section)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. evaluate.chunk_images=512")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides), args.weights, args.source, args.out,
            split=args.split)
    except (ConfigError, UserError, ValueError, FileNotFoundError, storage.StorageError) as exc:
        print(f"pipelines.infer: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
