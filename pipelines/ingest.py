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
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from cocoseg import storage
from cocoseg.config import ConfigError, JobConfig, load_config, to_dict
from cocoseg.data.coco import IngestError
from cocoseg.data.ingest import process_batch
from cocoseg.data.schema import MANIFEST_NAME, manifest_summary, read_manifest, snapshot_uri
from cocoseg.data.snapshot import SnapshotWriter, compute_snapshot_id, sort_records
from cocoseg.data.source import plan_source
from cocoseg.utils import UserError, get_logger

__all__ = ["main", "run"]

log = get_logger("pipelines.ingest")


def _stream(records: list[dict[str, Any]], writer: SnapshotWriter, cfg: JobConfig, id_to_index: dict[int, int]) -> None:
    """Read + validate the records in parallel with Ray Data; feed the writer in record order."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    options = ray.data.DataContext.get_current().execution_options
    saved, options.preserve_order = options.preserve_order, True  # deterministic shard contents
    ic = cfg.ingest
    blocks = ic.read_parallelism if ic.read_parallelism > 0 else max(1, min(math.ceil(len(records) / ic.batch_rows), 400))
    ds = ray.data.from_items(records, override_num_blocks=blocks).map_batches(
        process_batch, batch_format="pyarrow", batch_size=ic.batch_rows,
        fn_kwargs={"id_to_index": id_to_index, "tolerance_px": ic.box_tolerance_px,
                   "decode_check": ic.decode_check})
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
    finally:
        options.preserve_order = saved


def run(cfg: JobConfig) -> dict[str, Any]:
    """Ingest ``cfg.ingest.source`` and return the manifest dict.

    The returned dict is the manifest as written plus ``snapshot_uri`` (where it lives) and
    ``skipped`` (True when an identical snapshot already existed and nothing was done).
    """
    started = time.perf_counter()
    ic = cfg.ingest
    if not ic.source:
        raise IngestError("ingest.source is empty: pass SOURCE (a folder, s3:// prefix or dataset YAML)")
    dest = ic.dest or cfg.storage.root
    plan = plan_source(ic.source, ic.layout, ic.splits)
    settings = {"shard_bytes": ic.shard_bytes, "box_tolerance_px": ic.box_tolerance_px,
                "decode_check": ic.decode_check, "splits": [s.name for s in plan.splits]}
    snapshot_id = compute_snapshot_id(plan, settings)
    uri = snapshot_uri(dest, snapshot_id)
    if storage.exists(storage.join(uri, MANIFEST_NAME)):
        manifest = read_manifest(uri)
        log.info("snapshot %s already exists for this source (fingerprint %s): nothing to do",
                 snapshot_id, plan.fingerprint[:16])
        print(f"unchanged source: snapshot {snapshot_id} already exists at {uri}; nothing to do")
        return {**manifest, "skipped": True}
    records = sort_records(plan)
    log.info("ingest %s -> %s: %d images in %d splits (%s layout)", plan.source, uri, len(records),
             len(plan.splits), plan.layout)
    writer = SnapshotWriter(dest, snapshot_id, plan, ic.shard_bytes, settings, started=started)
    if records:
        _stream(records, writer, cfg, plan.class_map.id_to_index)
    manifest = writer.commit()
    print(manifest_summary(manifest))
    return {**manifest, "skipped": False}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="job config YAML (sections storage, ingest, ...)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. ingest.source=s3://b/coco")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        log.info("config: %s", to_dict(cfg)["ingest"])
        run(cfg)
    except (ConfigError, UserError) as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
