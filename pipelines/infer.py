"""Batch inference job: weights + a folder, ``s3://`` prefix or snapshot of images -> Parquet predictions.

    ray job submit --working-dir . -- python -m pipelines.infer --config pipelines/configs/evaluate.yaml \\
        models:/cocoseg-yolov8-seg@champion s3://bucket/incoming/2026-12-04/ \\
        --out s3://bucket/predictions/2026-12-04

(or ``cocoseg infer WEIGHTS SOURCE --out DEST``: the same arguments, declared once in
``cocoseg/jobs/infer.py``). Reads: every file under SOURCE (a non-image
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

from cocoseg import jobs
from cocoseg.batch.infer import infer

__all__ = ["build_parser", "main", "run"]

run = infer  # the work: cocoseg.batch.infer.infer(cfg, weights, source, out, split="")


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/infer.py``, as ``cocoseg infer`` has it."""
    return jobs.build_parser("infer", "python -m pipelines.infer", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
