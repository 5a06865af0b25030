"""Ingest COCO-Seg into an immutable, sharded Parquet snapshot: the source planned on the driver,
each shard written by a Ray Data task, the manifest committed last.

The job ``pipelines.ingest`` runs :func:`ingest` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from cocoseg import storage
from cocoseg.config import JobConfig
from cocoseg.config_checks import prepare, ready
from cocoseg.data.class_stats import format_class_table
from cocoseg.data.schema import MANIFEST_NAME, Manifest, manifest_summary, read_manifest, snapshot_uri
from cocoseg.ingest.coco import IngestError
from cocoseg.ingest.snapshot import (
    SnapshotWriter,
    compute_snapshot_id,
    plan_shards,
    sort_records,
    write_shard,
)
from cocoseg.ingest.source import plan_source
from cocoseg.utils import get_logger

__all__ = ["IngestResult", "ingest"]

log = get_logger(__name__)


def _write_shards(specs: list[dict[str, Any]], writer: SnapshotWriter, cfg: JobConfig,
                  id_to_index: dict[int, int]) -> None:
    """Ray Data maps each planned shard to a task that reads, validates and writes its own Parquet
    file under the (uncommitted) snapshot folder and returns only metadata for the driver.

    One block per shard, so the shards run in parallel across the cluster; the specs and
    results travel as JSON text because annotation records are heterogeneous (crowd RLE counts
    are lists or strings) and Arrow must not guess one type for them.
    """
    import ray

    from cocoseg.cluster import start_ray

    start_ray()  # the cluster in RAY_ADDRESS (ray.init reads it), else a local Ray
    ic = cfg.ingest
    kwargs = {"snapshot": writer.uri, "id_to_index": id_to_index, "tolerance_px": ic.box_tolerance_px,
              "decode_check": ic.decode_check}
    items = [{"spec": json.dumps(spec)} for spec in specs]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if ic.read_parallelism > 0:
        ds = ds.map(_shard_task, fn_kwargs=kwargs, num_cpus=1, concurrency=ic.read_parallelism)
    else:
        ds = ds.map(_shard_task, fn_kwargs=kwargs, num_cpus=1)
    for row in ds.iter_rows():  # as each shard finishes: the writer's progress line follows them
        writer.add_shard(json.loads(row["meta"]))


def _shard_task(row: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    return {"meta": json.dumps(write_shard(json.loads(row["spec"]), **kwargs))}


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did: the snapshot's ``manifest`` (its ``snapshot_uri`` says where it lives) and
    ``skipped``, True when an identical snapshot already existed and nothing was written."""

    manifest: Manifest
    skipped: bool


def ingest(cfg: JobConfig) -> IngestResult:
    """Ingest ``cfg.ingest.source``; returns the committed (or already present) snapshot's manifest."""
    started = time.perf_counter()
    cfg = prepare("ingest", cfg)  # absolute paths, the source checked once (cocoseg.config_checks)
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
        return IngestResult(manifest, skipped=True)
    records = sort_records(plan)
    log.info("ingest %s -> %s: %d images in %d splits (%s layout)", plan.source, uri, len(records),
             len(plan.splits), plan.layout)
    ready("ingest", cfg, {"source": ic.source, "images": len(records), "snapshot": uri})
    writer = SnapshotWriter(dest, snapshot_id, plan, ic.shard_bytes, settings, started=started)
    specs = plan_shards(records, ic.shard_bytes)
    if specs:
        _write_shards(specs, writer, cfg, plan.class_map.id_to_index)
    manifest = writer.commit()
    print(manifest_summary(manifest))
    for split in manifest.splits:  # per-class counts: what the classes' APs will rest on
        print(format_class_table(manifest, split))
    return IngestResult(manifest, skipped=False)
