"""Write a snapshot: byte-bounded Parquet shards, the quarantine file, and the manifest last.

The ingest job plans the shards before reading any image (:func:`plan_shards`: records in
(split, image id) order, a new shard before the record whose *source file bytes* would take the
shard past ``shard_bytes``), so each shard is one independent task (:func:`write_shard`) that
reads, validates and writes its own Parquet file and returns only small metadata; the driver's
:class:`SnapshotWriter` collects that metadata (:meth:`SnapshotWriter.add_shard`) and commits.
A shard whose every image is quarantined writes no file and is not listed (its index is skipped).

Record order is fixed by the source (split, then image id), so an image always lands in the same
shard under the same name for the same source and settings.

Atomicity: the manifest is written last, with one atomic write; a folder without a manifest is
an interrupted ingest, which readers ignore and the next run of the same snapshot id removes
before writing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cocoseg import __version__, storage
from cocoseg.data.class_stats import merge_stats, tally
from cocoseg.data.schema import (
    MANIFEST_NAME,
    QUARANTINE_NAME,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    SNAPSHOT_SCHEMA,
    Manifest,
    dumps_manifest,
    snapshot_uri,
)
from cocoseg.utils import get_logger, git_commit

from .records import process_record
from .source import SourcePlan

__all__ = ["SnapshotWriter", "compute_snapshot_id", "plan_shards", "sort_records", "write_shard"]

log = get_logger(__name__)

# Rows are written (streamed) in row groups of about this size: the unit an input actor reads
# (cocoseg.data.stage.ChunkAugmenter): ~6 COCO images, so the actor of a 16-row chunk of consecutive
# rows shares at most its two edge groups with the actors of the chunks beside it: 1.25x the split
# read per epoch with any number of actors (4 MB groups: 2-3x; whole 256 MB shards, as before: 1x
# per actor). Chunks of four 4-row runs mixed over the epoch (data.chunk_runs 4, the default) read ~2.7x.
_ROW_GROUP_BYTES = 1024 * 1024


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


def plan_shards(records: list[dict[str, Any]], shard_bytes: int) -> list[dict[str, Any]]:
    """Cut records (in :func:`sort_records` order) into shard specs, before any image is read.

    A spec is ``{"split", "index", "path", "records"}``; a shard closes before the record whose
    file ``size`` (bytes, from the source listing) would take it past ``shard_bytes``, and at
    each split change. Only the listing decides the cut, so the same source gives the same
    shards, whatever the validation finds and however the work is scheduled.
    """
    specs: list[dict[str, Any]] = []
    count: Counter = Counter()
    current: list[dict[str, Any]] = []
    size = 0
    for rec in records:
        n = int(rec.get("size") or 0)
        if current and (rec["split"] != current[0]["split"] or size + n > shard_bytes):
            specs.append(_spec(current, count))
            current, size = [], 0
        current.append(rec)
        size += n
    if current:
        specs.append(_spec(current, count))
    return specs


def _spec(records: list[dict[str, Any]], count: Counter) -> dict[str, Any]:
    split = records[0]["split"]
    index = count[split]
    count[split] += 1
    return {"split": split, "index": index, "path": f"{split}/part-{index:05d}.parquet", "records": records}


def write_shard(spec: dict[str, Any], snapshot: str, id_to_index: dict[int, int], tolerance_px: float = 2.0,
                decode_check: str = "header") -> dict[str, Any]:
    """Read, validate and write one planned shard to ``<snapshot>/<spec path>``; return its metadata.

    Returns ``{"split", "index", "path", "rows", "instances", "bytes", "rejects", "stats"}``
    (``rejects``: quarantine rows as dicts; ``stats``: the written rows' per-class counts,
    :func:`cocoseg.data.class_stats.tally`). No file is written (``rows`` 0, ``bytes`` 0) when every image of
    the shard is rejected. Images go out as row groups of about 32 MB of encoded bytes.
    """
    rows, rejects, pending, instances = 0, [], [], 0
    kept_annotations: list[list[dict[str, Any]]] = []
    writer = stream = None
    pending_bytes = 0
    uri = storage.join(snapshot, *spec["path"].split("/"))
    try:
        for rec in spec["records"]:
            out = process_record(rec, id_to_index, tolerance_px, decode_check)
            text = out.pop("_rejects")
            if text:
                rejects.extend(json.loads(text))
            if not out.pop("_keep"):
                continue
            pending.append(out)
            kept_annotations.append([{k: a[k] for k in ("category", "area", "iscrowd")} for a in out["annotations"]])
            pending_bytes += len(out["image"])
            instances += len(out["annotations"])
            if pending_bytes >= _ROW_GROUP_BYTES:
                writer, stream = _write_rows(writer, stream, uri, pending)
                rows, pending, pending_bytes = rows + len(pending), [], 0
        if pending:
            writer, stream = _write_rows(writer, stream, uri, pending)
            rows += len(pending)
    finally:
        if writer is not None:
            writer.close()
            stream.close()
    fs, path = storage.filesystem(uri)
    size = fs.get_file_info(path).size if rows else 0
    return {"split": spec["split"], "index": spec["index"], "path": spec["path"], "rows": rows,
            "instances": instances, "bytes": int(size or 0), "rejects": rejects,
            "stats": tally(kept_annotations, max(id_to_index.values(), default=-1) + 1)}


def _write_rows(writer: pq.ParquetWriter | None, stream: Any, uri: str, rows: list[dict[str, Any]]):
    """Append ``rows`` as one row group (opening the file on first use); -> (writer, stream)."""
    if writer is None:
        fs, path = storage.filesystem(uri)
        if not storage.is_s3(uri):  # S3 has no folders
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        stream = fs.open_output_stream(path)
        # JPEG/PNG bytes neither compress nor repeat: no codec, no dictionary, no statistics
        # for them (each would hash or scan every byte); the annotation columns do compress.
        names = SNAPSHOT_SCHEMA.names
        writer = pq.ParquetWriter(stream, SNAPSHOT_SCHEMA,
                                  compression={n: ("NONE" if n == "image" else "ZSTD") for n in names},
                                  use_dictionary=[n for n in names if n != "image"],
                                  write_statistics=[n for n in names if n != "image"])
    table = pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA)
    writer.write_table(table, row_group_size=max(1, table.num_rows))
    return writer, stream


@dataclass
class _SplitTally:
    """One split's committed shards and counts (from the shard tasks' metadata)."""

    done: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    instances: int = 0
    stats: dict[str, Any] | None = None  # per-class counts (cocoseg.data.class_stats)


class SnapshotWriter:
    """Streams processed rows into ``<root>/snapshots/<snapshot_id>/`` and commits a manifest."""

    def __init__(self, root: str, snapshot_id: str, plan: SourcePlan, shard_bytes: int,
                 settings: dict[str, Any], started: float | None = None):
        self.root, self.snapshot_id, self.plan = root, snapshot_id, plan
        self.uri = snapshot_uri(root, snapshot_id)
        self.shard_bytes, self.settings = shard_bytes, settings
        self.splits: dict[str, _SplitTally] = defaultdict(_SplitTally)
        self.rejects: list[dict[str, Any]] = [r for s in plan.splits for r in s.rejects]
        self._shard_metas: dict[tuple[str, int], dict[str, Any]] = {}  # add_shard -> commit
        self.total = sum(len(s.records) for s in plan.splits)
        self.seen = 0
        self.started = started if started is not None else time.perf_counter()
        self._last_log = self.started
        if storage.exists(self.uri):
            log.warning("removing %s: the partial snapshot of an interrupted ingest (it had no manifest)", self.uri)
            storage.delete(self.uri, recursive=True)
        storage.makedirs(self.uri)

    def add_shard(self, meta: dict[str, Any]) -> None:
        """Take one shard written by :func:`write_shard`, in any order (as the tasks finish).

        Only progress is counted here; :meth:`commit` records the shards in (split, index) order,
        so the manifest's shard lists and the quarantine stay deterministic.
        """
        self._shard_metas[(meta["split"], meta["index"])] = meta
        self.seen += meta["rows"] + sum(1 for r in meta["rejects"] if r["annotation_id"] is None)
        self._progress()

    def _record_shards(self) -> None:
        order = {s.name: i for i, s in enumerate(self.plan.splits)}
        for key in sorted(self._shard_metas, key=lambda k: (order.get(k[0], len(order)), k)):
            meta = self._shard_metas[key]
            shards = self.splits[meta["split"]]
            self.rejects.extend(meta["rejects"])
            if meta["rows"]:
                shards.done.append({"path": meta["path"], "rows": meta["rows"], "bytes": meta["bytes"]})
            shards.images += meta["rows"]
            shards.instances += meta["instances"]
            if "stats" in meta:
                shards.stats = merge_stats(shards.stats, meta["stats"])
        self._shard_metas.clear()

    def _progress(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last_log >= 2.0:
            rate = self.seen / max(now - self.started, 1e-9)
            rejected = len(self.rejects) + sum(len(m["rejects"]) for m in self._shard_metas.values())
            log.info("ingest %s: %d/%d images (%.0f img/s), %d quarantine rows",
                     self.snapshot_id, self.seen, self.total, rate, rejected)
            self._last_log = now

    def commit(self) -> Manifest:
        """Flush the last shards, write ``_quarantine.parquet``, check the counts, write the manifest."""
        self._record_shards()
        self._progress(force=True)
        quarantine = pa.Table.from_pylist(self.rejects, schema=QUARANTINE_SCHEMA)
        fs, path = storage.filesystem(storage.join(self.uri, QUARANTINE_NAME))
        with fs.open_output_stream(path) as out:
            pq.write_table(quarantine, out)
        manifest = Manifest.from_json(self._manifest(), self.uri)
        storage.write_text(storage.join(self.uri, MANIFEST_NAME), dumps_manifest(manifest))
        return manifest

    def _manifest(self) -> dict[str, Any]:
        per_reason: dict[str, Counter] = defaultdict(Counter)
        for r in self.rejects:
            per_reason[r["reason"]]["instances" if r["annotation_id"] is not None else "images"] += 1
        splits = {}
        for s in self.plan.splits:
            shards = self.splits.get(s.name, _SplitTally())
            splits[s.name] = {"source_split": s.source_name, "images": shards.images,
                              "annotations": shards.instances, "shards": shards.done,
                              "stats": shards.stats or tally([], len(self.plan.class_map.names))}
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
