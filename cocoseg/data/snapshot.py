"""Write a snapshot: byte-bounded Parquet shards, the quarantine file, and the manifest last.

:class:`SnapshotWriter` consumes the output of :func:`cocoseg.data.ingest.process_batch` *in
record order* (the ingest job streams it from Ray Data with order preserved) and cuts each
split into shards greedily: a shard is closed before the row that would take it past
``shard_bytes``. Record order is fixed by the source (split, then image id), so an image always
lands in the same shard under the same name for the same source.

Atomicity: the manifest is written last, with one atomic write; a folder without a manifest is
an interrupted ingest, which readers ignore and the next run of the same snapshot id removes
before writing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocoseg import __version__, storage
from cocoseg.utils import get_logger, git_commit

from .schema import (
    MANIFEST_NAME,
    QUARANTINE_NAME,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    SNAPSHOT_SCHEMA,
    dumps_manifest,
    snapshot_uri,
)
from .source import SourcePlan

__all__ = ["SnapshotWriter", "compute_snapshot_id", "sort_records"]

log = get_logger(__name__)

_ROW_GROUP_BYTES = 64 * 1024 * 1024


def compute_snapshot_id(plan: SourcePlan, settings: dict[str, Any]) -> str:
    """16 hex chars from the source fingerprint, the schema version and the output settings."""
    blob = json.dumps({"fingerprint": plan.fingerprint, "schema": SCHEMA_VERSION, "settings": settings},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sort_records(plan: SourcePlan) -> list[dict[str, Any]]:
    """All records, split by split (source order) and by image id within a split."""
    out = []
    for split in plan.splits:
        out.extend(sorted(split.records, key=lambda r: (r["image_id"], r["file_name"])))
    return out


class _Shards:
    """The open shard of one split: buffered rows and their estimated bytes."""

    def __init__(self) -> None:
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.done: list[dict[str, Any]] = []
        self.images = 0
        self.instances = 0


class SnapshotWriter:
    """Streams processed rows into ``<root>/snapshots/<snapshot_id>/`` and commits a manifest."""

    def __init__(self, root: str, snapshot_id: str, plan: SourcePlan, shard_bytes: int,
                 settings: dict[str, Any], started: float | None = None):
        self.root, self.snapshot_id, self.plan = root, snapshot_id, plan
        self.uri = snapshot_uri(root, snapshot_id)
        self.shard_bytes, self.settings = shard_bytes, settings
        self.splits: dict[str, _Shards] = defaultdict(_Shards)
        self.rejects: list[dict[str, Any]] = [r for s in plan.splits for r in s.rejects]
        self.total = sum(len(s.records) for s in plan.splits)
        self.seen = 0
        self.started = started if started is not None else time.perf_counter()
        self._last_log = self.started
        if storage.exists(self.uri):
            log.warning("removing %s: the partial snapshot of an interrupted ingest (it had no manifest)", self.uri)
            storage.delete(self.uri, recursive=True)
        storage.makedirs(self.uri)

    def add(self, table: pa.Table) -> None:
        """Take one processed batch (``OUTPUT_SCHEMA``), in record order."""
        for text in table.column("_rejects").to_pylist():
            if text:
                self.rejects.extend(json.loads(text))
        kept = table.filter(pc.field("_keep")).select(SNAPSHOT_SCHEMA.names).cast(SNAPSHOT_SCHEMA)
        if kept.num_rows:
            image_bytes = pc.binary_length(kept.column("image")).to_pylist()
            ann_bytes = kept.column("annotations").nbytes / kept.num_rows
            splits = kept.column("split").to_pylist()
            for i, (split, size) in enumerate(zip(splits, image_bytes, strict=True)):
                self._add_row(split, kept.slice(i, 1), size + ann_bytes + 64)
        self.seen += table.num_rows
        self._progress()

    def _add_row(self, split: str, row: pa.Table, size: float) -> None:
        shards = self.splits[split]
        if shards.pending and shards.pending_bytes + size > self.shard_bytes:
            self._flush(split)
        shards.pending.append(row)
        shards.pending_bytes += size

    def _flush(self, split: str) -> None:
        shards = self.splits[split]
        if not shards.pending:
            return
        table = pa.concat_tables(shards.pending).combine_chunks()
        rel = f"{split}/part-{len(shards.done):05d}.parquet"
        uri = storage.join(self.uri, *rel.split("/"))
        fs, path = storage.filesystem(uri)
        storage.makedirs(storage.join(self.uri, split))
        rows_per_group = max(1, int(table.num_rows * _ROW_GROUP_BYTES / max(shards.pending_bytes, 1)))
        # JPEG/PNG bytes do not compress; the annotation columns do.
        compression = {name: ("NONE" if name == "image" else "ZSTD") for name in SNAPSHOT_SCHEMA.names}
        with fs.open_output_stream(path) as out:
            pq.write_table(table, out, compression=compression, row_group_size=rows_per_group)
        n_instances = sum(pc.list_value_length(table.column("annotations")).fill_null(0).to_pylist())
        shards.done.append({"path": rel, "rows": table.num_rows, "bytes": fs.get_file_info(path).size})
        shards.images += table.num_rows
        shards.instances += n_instances
        shards.pending, shards.pending_bytes = [], 0

    def _progress(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last_log >= 2.0:
            rate = self.seen / max(now - self.started, 1e-9)
            log.info("ingest %s: %d/%d images (%.0f img/s), %d quarantine rows",
                     self.snapshot_id, self.seen, self.total, rate, len(self.rejects))
            self._last_log = now

    def commit(self) -> dict[str, Any]:
        """Flush the last shards, write ``_quarantine.parquet``, check the counts, write the manifest."""
        for split in list(self.splits):
            self._flush(split)
        self._progress(force=True)
        quarantine = pa.Table.from_pylist(self.rejects, schema=QUARANTINE_SCHEMA)
        fs, path = storage.filesystem(storage.join(self.uri, QUARANTINE_NAME))
        with fs.open_output_stream(path) as out:
            pq.write_table(quarantine, out)
        manifest = self._manifest()
        storage.write_text(storage.join(self.uri, MANIFEST_NAME), dumps_manifest(manifest))
        manifest["snapshot_uri"] = self.uri
        return manifest

    def _manifest(self) -> dict[str, Any]:
        per_reason: dict[str, Counter] = defaultdict(Counter)
        for r in self.rejects:
            per_reason[r["reason"]]["instances" if r["annotation_id"] is not None else "images"] += 1
        splits = {}
        for s in self.plan.splits:
            shards = self.splits.get(s.name, _Shards())
            splits[s.name] = {"source_split": s.source_name, "images": shards.images,
                              "annotations": shards.instances, "shards": shards.done}
        counts = {
            "images_read": sum(s.images_read for s in self.plan.splits),
            "images_written": sum(v["images"] for v in splits.values()),
            "images_quarantined": sum(c["images"] for c in per_reason.values()),
            "instances_read": sum(s.instances_read for s in self.plan.splits),
            "instances_written": sum(v["annotations"] for v in splits.values()),
            "instances_quarantined": sum(c["instances"] for c in per_reason.values()),
        }
        for kind in ("images", "instances"):
            if counts[f"{kind}_read"] != counts[f"{kind}_written"] + counts[f"{kind}_quarantined"]:
                raise RuntimeError(f"ingest bug: {kind} do not reconcile: {counts}")
        return {
            "snapshot_id": self.snapshot_id,
            "schema_version": SCHEMA_VERSION,
            "source": self.plan.source,
            "layout": self.plan.layout,
            "source_fingerprint": self.plan.fingerprint,
            "class_names": list(self.plan.class_map.names),
            "category_ids": list(self.plan.class_map.category_ids),
            "splits": splits,
            "quarantined": {k: dict(v) for k, v in sorted(per_reason.items())},
            "counts": counts,
            "settings": self.settings,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "duration_s": round(time.perf_counter() - self.started, 3),
            "cocoseg_version": __version__,
            "git_commit": git_commit(),
        }
