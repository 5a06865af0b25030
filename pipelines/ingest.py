"""Ingest COCO-Seg into an immutable, sharded Parquet snapshot with Ray Data.

    ray job submit --working-dir . -- python -m pipelines.ingest \\
        --config pipelines/configs/ingest.yaml ingest.source=s3://bucket/coco storage.root=s3://bucket/cocoseg

(or ``python -m pipelines.ingest SOURCE DEST``, ``cocoseg ingest SOURCE DEST [key=value ...]``:
the same arguments, declared once in ``cocoseg/jobs/ingest.py``; SOURCE and DEST set
``ingest.source`` and ``ingest.dest``). The environment of the Ray workers must carry the AWS variables for ``s3://``.

Reads: ``ingest.source``: a COCO folder (``annotations/instances_<split>.json`` + images), a
YOLO dataset YAML, local or ``s3://``. Writes: ``<ingest.dest or storage.root>/snapshots/<id>/``
with ``<split>/part-NNNNN.parquet``, ``_quarantine.parquet`` and ``_manifest.json`` (last).

Rerun: a no-op that says so when the source (listing + annotation bytes) and the output settings
are unchanged (same snapshot id, manifest present); a run killed mid-write leaves no manifest,
and the rerun removes its partial folder and writes the snapshot again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import jobs
from cocoseg.ingest.job import ingest

__all__ = ["build_parser", "main", "run"]

run = ingest  # the work: cocoseg.ingest.job.ingest(cfg) -> IngestResult (the Manifest, skipped)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/ingest.py``, as ``cocoseg ingest`` has it."""
    return jobs.build_parser("ingest", "python -m pipelines.ingest", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
