"""The Parquet snapshot: its schema (declared once, versioned), its manifest, and readers.

A snapshot lives under ``<root>/snapshots/<snapshot_id>/``::

    _manifest.json            written last: a snapshot without it does not exist
    _quarantine.parquet       every rejected image or instance with its reason
    <split>/part-00000.parquet  one row per image, schema :data:`SNAPSHOT_SCHEMA`

Row layout (one image per row; coordinates in pixels of the original image, COCO conventions):

- ``image_id`` int64, ``file_name`` string (relative to the source split folder), ``split``
  string (canonical: ``train`` / ``val`` / ``test`` or the source name), ``width`` / ``height``
  int32, ``image`` binary (the original encoded bytes, never decoded pixels);
- ``annotations`` list of struct: ``id`` int64, ``category`` int16 (contiguous 0..nc-1),
  ``category_id`` int16 (the source's id, e.g. COCO 1..90), ``bbox_xywh`` list<float32>[4]
  (top-left x, y, width, height), ``area`` float32 (mask area in px^2), ``iscrowd`` bool,
  ``polygons`` list<list<float64>> (each part ``[x0, y0, x1, y1, ...]``; empty for crowd
  regions), ``rle_counts`` string (compressed COCO RLE of a crowd region at height x width,
  empty otherwise).

Readers call :func:`read_manifest` (which refuses unknown schema versions and missing
manifests; it returns a typed :class:`~cocoseg.data.manifest.Manifest`), :func:`list_shards`, and
:func:`snapshot_to_coco` for evaluation.

Layer L1: imports only L0 modules of cocoseg and :mod:`.manifest`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cocoseg import storage
from cocoseg.utils import UserError

from .manifest import Manifest, ManifestError, dumps_manifest

__all__ = [
    "ANNOTATION_TYPE",
    "MANIFEST_NAME",
    "QUARANTINE_NAME",
    "QUARANTINE_SCHEMA",
    "SCHEMA_VERSION",
    "SNAPSHOT_SCHEMA",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Manifest",
    "SnapshotError",
    "dumps_manifest",
    "iter_split_batches",
    "latest_snapshot",
    "list_shards",
    "list_snapshots",
    "read_manifest",
    "read_split_table",
    "rows_to_coco",
    "snapshot_to_coco",
    "snapshot_uri",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_NAME = "_manifest.json"
QUARANTINE_NAME = "_quarantine.parquet"
SNAPSHOTS_DIR = "snapshots"

ANNOTATION_TYPE = pa.struct([
    ("id", pa.int64()),
    ("category", pa.int16()),
    ("category_id", pa.int16()),
    ("bbox_xywh", pa.list_(pa.float32(), 4)),
    ("area", pa.float32()),
    ("iscrowd", pa.bool_()),
    # float64, not float32: float32 moves vertices enough to flip boundary pixels of small
    # masks (1 px of a 78 px shape is > 1 %); polygons are a small part of a row anyway.
    ("polygons", pa.list_(pa.list_(pa.float64()))),
    ("rle_counts", pa.string()),
])

SNAPSHOT_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image", pa.binary()),
        ("annotations", pa.list_(ANNOTATION_TYPE)),
    ],
    metadata={"cocoseg.schema_version": str(SCHEMA_VERSION)},
)

# One row per rejected record. ``annotation_id`` is null when the whole image was rejected
# (its instances are then counted as quarantined too, under the image's reason).
QUARANTINE_SCHEMA = pa.schema([
    ("split", pa.string()),
    ("image_id", pa.int64()),
    ("file_name", pa.string()),
    ("annotation_id", pa.int64()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])


class SnapshotError(UserError):
    """A snapshot is missing, incomplete or of a schema version this code does not know."""


def snapshot_uri(root: str, snapshot_id: str) -> str:
    """``<root>/snapshots/<snapshot_id>``."""
    return storage.join(root, SNAPSHOTS_DIR, snapshot_id)


def read_manifest(snapshot: str) -> Manifest:
    """Read and check ``<snapshot>/_manifest.json``.

    Returns the :class:`~cocoseg.data.manifest.Manifest` with ``snapshot_uri`` set to where it was
    read from (which :func:`list_shards` uses to resolve shard paths). Raises
    :class:`SnapshotError` when the manifest is absent (the snapshot is incomplete or the URI is
    wrong), malformed, or its ``schema_version`` is not one of :data:`SUPPORTED_SCHEMA_VERSIONS`.
    """
    uri = storage.join(snapshot, MANIFEST_NAME)
    try:
        doc = storage.read_json(uri)
    except FileNotFoundError:
        raise SnapshotError(
            f"{snapshot} has no {MANIFEST_NAME}: it is not a snapshot, or an ingest into it did not finish "
            f"(rerun `cocoseg ingest` to complete it)") from None
    except ValueError as exc:
        raise SnapshotError(str(exc)) from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise SnapshotError(
            f"{uri}: schema_version {version!r} is not supported by this cocoseg "
            f"(it reads {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); re-ingest the source or upgrade cocoseg")
    try:
        return Manifest.from_json(doc, str(snapshot), where=uri)
    except ManifestError as exc:
        raise SnapshotError(str(exc)) from None


def list_shards(manifest: Manifest, split: str) -> list[str]:
    """Absolute URIs of the Parquet shards of ``split`` (in shard order)."""
    if split not in manifest.splits:
        raise SnapshotError(f"snapshot {manifest.snapshot_id} has no split {split!r} "
                            f"(it has {', '.join(sorted(manifest.splits)) or 'none'})")
    return [storage.join(manifest.snapshot_uri, *shard.path.split("/")) for shard in manifest.splits[split].shards]


def list_snapshots(root: str) -> list[Manifest]:
    """Every *complete* snapshot under ``<root>/snapshots`` (those with a manifest), oldest first.

    Folders without a manifest (an interrupted ingest) are invisible here by design.
    """
    out = []
    for entry in storage.list_files(storage.join(root, SNAPSHOTS_DIR), recursive=True, suffix=MANIFEST_NAME):
        parent = entry.uri[: -len(MANIFEST_NAME)].rstrip("/\\")
        try:
            out.append(read_manifest(parent))
        except SnapshotError:
            continue
    return sorted(out, key=lambda m: (m.created_at, m.snapshot_id))


def latest_snapshot(root: str) -> str:
    """URI of the most recently created complete snapshot under ``root``."""
    found = list_snapshots(root)
    if not found:
        raise SnapshotError(f"no complete snapshot under {storage.join(root, SNAPSHOTS_DIR)}; run `cocoseg ingest` first")
    return found[-1].snapshot_uri


def read_split_table(snapshot: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of one split as one pyarrow Table (small snapshots: tests, evaluation)."""
    manifest = read_manifest(snapshot)
    tables = []
    for uri in list_shards(manifest, split):
        tables.append(pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns))
    if not tables:
        return SNAPSHOT_SCHEMA.empty_table() if columns is None else \
            pa.schema([SNAPSHOT_SCHEMA.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)


def iter_split_batches(snapshot: str, split: str, columns: list[str] | None = None, batch_rows: int = 32,
                       limit: int = 0) -> Iterator[pa.Table]:
    """The rows of one split (the first ``limit`` when > 0) as Tables of ``batch_rows`` rows (the
    last one shorter), in snapshot order, reading one shard's row group at a time: memory stays at
    about one batch plus one row group (ingest writes ~1 MB ones), whatever the size of the split."""
    manifest = read_manifest(snapshot)
    carry: list[pa.Table] = []
    have, left = 0, limit if limit > 0 else 1 << 62
    for uri in list_shards(manifest, split):
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns):
                batch = batch.slice(0, min(batch.num_rows, left))
                left -= batch.num_rows
                carry.append(pa.Table.from_batches([batch]))
                have += batch.num_rows
                while have >= batch_rows:
                    table = pa.concat_tables(carry)
                    rest = table.slice(batch_rows)
                    yield table.slice(0, batch_rows)
                    carry, have = ([rest] if rest.num_rows else []), rest.num_rows
                if left <= 0:
                    break
        if left <= 0:
            break
    if have:
        yield pa.concat_tables(carry)


def _annotation_to_coco(ann: dict[str, Any], image_id: int, width: int, height: int,
                        category_ids: list[int]) -> dict[str, Any]:
    if ann["iscrowd"]:
        segmentation: Any = {"size": [height, width], "counts": ann["rle_counts"]}
    else:
        segmentation = [[float(v) for v in part] for part in ann["polygons"]]
    return {
        "id": int(ann["id"]),
        "image_id": image_id,
        "category_id": int(category_ids[ann["category"]]),
        "bbox": [float(v) for v in ann["bbox_xywh"]],
        "area": float(ann["area"]),
        "iscrowd": int(bool(ann["iscrowd"])),
        "segmentation": segmentation,
    }


def rows_to_coco(rows: list[dict[str, Any]], class_names: list[str], category_ids: list[int]) -> dict[str, Any]:
    """Snapshot rows (dicts of :data:`SNAPSHOT_SCHEMA` columns; ``image`` may be absent) -> COCO dict.

    ``category_ids[k]`` is the source category id of contiguous class ``k``; the result uses the
    source ids, so it compares directly with the source's own annotation file.
    """
    images, annotations = [], []
    for row in rows:
        image_id, width, height = int(row["image_id"]), int(row["width"]), int(row["height"])
        images.append({"id": image_id, "file_name": row["file_name"], "width": width, "height": height})
        for ann in row["annotations"] or []:
            annotations.append(_annotation_to_coco(ann, image_id, width, height, category_ids))
    categories = [{"id": int(cid), "name": name} for cid, name in zip(category_ids, class_names, strict=True)]
    return {"info": {"description": "cocoseg snapshot"}, "images": images, "annotations": annotations,
            "categories": categories}


def snapshot_to_coco(snapshot: str, split: str) -> dict[str, Any]:
    """The ``split`` of a snapshot as a COCO instances dict (pycocotools ``COCO`` accepts it).

    Polygons stay polygons (every part), crowd regions become compressed RLE dicts; category ids
    are the source's (``Manifest.category_ids``). Image bytes are not read.
    """
    manifest = read_manifest(snapshot)
    table = read_split_table(snapshot, split,
                             columns=["image_id", "file_name", "width", "height", "annotations"])
    return rows_to_coco(table.to_pylist(), list(manifest.class_names), list(manifest.category_ids))


def manifest_summary(manifest: Manifest) -> str:
    """A one-screen, human-readable summary of a manifest."""
    m = manifest
    names = m.class_names
    lines = [f"snapshot {m.snapshot_id}  (schema v{m.schema_version})",
             f"  uri:     {m.snapshot_uri}",
             f"  source:  {m.source}  [{m.layout}]  fingerprint {m.source_fingerprint[:16]}",
             f"  classes: {len(names)} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"]
    for name, split in m.splits.items():
        size_mb = sum(s.bytes for s in split.shards) / 1e6
        lines.append(f"  {name:<6} {split.images:>8} images {split.annotations:>9} instances "
                     f"{len(split.shards):>4} shards {size_mb:>9.1f} MB")
    counts = m.counts
    if counts:
        lines.append(f"  read {counts['images_read']} images / {counts['instances_read']} instances; "
                     f"quarantined {counts['images_quarantined']} images / {counts['instances_quarantined']} instances")
    for reason, n in sorted(m.quarantined.items()):
        lines.append(f"    quarantined {reason}: {dict(n)}")
    if m.duration_s is not None:
        lines.append(f"  took {m.duration_s:.1f} s")
    return "\n".join(lines)
