"""Ingest COCO-Seg into an immutable, sharded Parquet snapshot with Ray Data.

    ray job submit --working-dir . -- python -m pipelines.ingest \\
        --config pipelines/configs/ingest.yaml ingest.source=s3://bucket/coco storage.root=s3://bucket/cocoseg

(or ``cocoseg ingest SOURCE DEST [key=value ...]``; ``python -m pipelines.ingest`` against a
local Ray). The environment of the Ray workers must carry the AWS variables for ``s3://``.

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

from cocoseg.config import ConfigError, config_path, load_config, to_dict
from cocoseg.ingest.job import ingest
from cocoseg.utils import UserError, get_logger

__all__ = ["main", "run"]

log = get_logger("pipelines.ingest")

run = ingest  # the work: cocoseg.ingest.job.ingest(cfg) -> IngestResult (the Manifest, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="job config YAML (sections storage, ingest, ...)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. ingest.source=s3://b/coco")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_path(args.config), args.overrides)
        log.info("config: %s", to_dict(cfg)["ingest"])
        run(cfg)
    except (ConfigError, UserError) as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
