"""The storage side of ``pipelines.infer``: what to read (chunks), what was written (parts), the manifest.

A *chunk* is the unit of work and of resume: a run of the sorted source listing
(``evaluate.chunk_images`` files) or one snapshot shard. Its output file is
``part-<16 hex of SHA-256 over its sources>.parquet``, written whole (a local temp file renamed
into place, or one S3 PUT) by :func:`write_part`, so a file that exists is a finished chunk.
Each part carries, in its Parquet metadata, the weights' SHA-256, the protocol hash and its own
counts: a resumed run refuses parts made by other weights and never rereads their rows.
``_manifest.json`` is written last and lists every part with its size and SHA-256, in the
:func:`cocoseg.storage.check_manifest` format. :func:`summary` is the report printed at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cocoseg import storage
from cocoseg.data.schema import MANIFEST_NAME as SNAPSHOT_MANIFEST
from cocoseg.data.schema import read_manifest
from cocoseg.model.weights import read_card
from cocoseg.utils import UserError

__all__ = ["MANIFEST", "Chunk", "plan_chunks", "previous_manifest", "read_chunks", "read_part_meta", "summary",
           "weights_identity", "write_part"]

MANIFEST = "_manifest.json"
_META = b"cocoseg.infer"  # Parquet key-value metadata of each part (JSON)


@dataclass(frozen=True)
class Chunk:
    """``uris``: image files, or one snapshot shard (``label`` = ``<snapshot>#<split>``); ``rows``: images."""

    name: str
    uris: tuple[str, ...]
    rows: int
    label: str = ""


def _name(parts: list[str]) -> str:
    return f"part-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:16]}.parquet"


def _is_snapshot(source: str) -> bool:
    try:
        return "splits" in storage.read_json(storage.join(source, SNAPSHOT_MANIFEST))
    except (FileNotFoundError, ValueError, IsADirectoryError):
        return False


def plan_chunks(source: str, dest: str, chunk_images: int, split: str = "") -> tuple[dict[str, Any], list[Chunk]]:
    """SOURCE -> (its description for the manifest, the chunks in order). Every file under a
    folder / prefix is an image candidate (a non-image file becomes an error row, never a silent
    drop), except what lies under DEST; a snapshot gives one chunk per shard of ``split`` (all splits by default)."""
    if _is_snapshot(source):
        manifest = read_manifest(source)
        splits = [split] if split else list(manifest.splits)
        chunks = []
        for name in splits:
            if name not in manifest.splits:
                raise UserError(f"{source}: the snapshot has no split {name!r} (it has {', '.join(manifest.splits)})")
            for shard in manifest.splits[name].shards:
                uri = storage.join(manifest.snapshot_uri, *shard.path.split("/"))
                chunks.append(Chunk(_name([manifest.snapshot_id, shard.path]), (uri,), shard.rows,
                                    label=f"{manifest.snapshot_uri}#{name}"))
        return {"uri": source, "kind": "snapshot", "snapshot_id": manifest.snapshot_id, "splits": splits}, chunks
    skip = dest.rstrip("/") if storage.is_s3(dest) else os.path.abspath(dest)
    uris = [e.uri for e in storage.list_files(source) if not (e.uri + "/").startswith(skip + "/")
            and not (storage.is_s3(e.uri) and e.uri.endswith("/"))]
    if not uris:
        raise UserError(f"{source}: no files to run on (an empty folder or prefix, or a wrong path)")
    groups = [uris[i:i + chunk_images] for i in range(0, len(uris), chunk_images)]
    return {"uri": source, "kind": "files"}, [Chunk(_name(g), tuple(g), len(g)) for g in groups]


def weights_identity(weights: str, local: str) -> dict[str, Any]:
    """What names the model: the URI given, the SHA-256 of its ``model.safetensors``, its card."""
    card = read_card(local)
    return {"uri": weights, "sha256": storage.sha256(storage.read_bytes(storage.join(local, "model.safetensors"))),
            "variant": card.variant, "num_classes": card.num_classes, "class_names": list(card.class_names),
            "imgsz": int(card.imgsz)}


def read_chunks(batch: dict[str, Any]) -> pa.Table:
    """Ray Data task: chunk descriptions -> rows ``chunk, source_uri, data, error`` (one per image).

    A file that cannot be read is a row with ``error`` set, not a failed task; a snapshot shard
    gives its rows' stored bytes (``source_uri`` = ``<snapshot>#<split>/<image_id>``).
    """
    out: dict[str, list] = {"chunk": [], "source_uri": [], "data": [], "error": []}
    for name, uris, label in zip(batch["chunk"], batch["uris"], batch["label"], strict=True):
        if label:
            table = pq.read_table(io.BytesIO(storage.read_bytes(uris[0])), columns=["image_id", "image"])
            ids, data = table.column("image_id").to_pylist(), table.column("image").to_pylist()
            out["source_uri"] += [f"{label}/{i}" for i in ids]
            out["data"] += data
            out["error"] += [None] * len(ids)
            out["chunk"] += [name] * len(ids)
            continue
        for uri in uris:
            try:
                data, error = storage.read_bytes(uri), None
            except (OSError, storage.StorageError) as exc:  # FileNotFoundError included
                data, error = None, f"{uri}: cannot read: {exc}"
            out["chunk"].append(name)
            out["source_uri"].append(uri)
            out["data"].append(data)
            out["error"].append(error)
    return pa.table({"chunk": pa.array(out["chunk"], pa.string()), "source_uri": pa.array(out["source_uri"], pa.string()),
                     "data": pa.array(out["data"], pa.binary()), "error": pa.array(out["error"], pa.string())})


def write_part(dest: str, name: str, table: pa.Table, identity: dict[str, str]) -> dict[str, Any]:
    """Write one chunk's rows (sorted by ``source_uri``) as ``dest/name``, atomically; returns its entry."""
    table = table.sort_by("source_uri")
    failed = table.num_rows - table.column("error").null_count
    detections = sum(len(s) for s in table.column("scores").to_pylist() if s)
    meta = {**identity, "rows": table.num_rows, "failed": failed, "detections": detections}
    table = table.replace_schema_metadata({_META: json.dumps(meta).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    storage.write_bytes(storage.join(dest, name), data)
    return {"size": len(data), "sha256": storage.sha256(data), "rows": meta["rows"], "failed": failed,
            "detections": detections}


def read_part_meta(uri: str, identity: dict[str, str]) -> dict[str, Any]:
    """A finished part's manifest entry, from its Parquet metadata; refuses one of other weights/protocol."""
    data = storage.read_bytes(uri)
    raw = (pq.read_schema(io.BytesIO(data)).metadata or {}).get(_META)
    meta = json.loads(raw) if raw else {}
    if any(meta.get(k) != v for k, v in identity.items()):
        raise UserError(f"{uri} was written by other weights or another protocol (weights sha256 "
                        f"{str(meta.get('weights_sha256'))[:12]}, protocol {meta.get('protocol_hash')}); "
                        "choose another --out, or delete that folder to replace its predictions")
    return {"size": len(data), "sha256": storage.sha256(data), "rows": meta["rows"], "failed": meta["failed"],
            "detections": meta["detections"]}


def previous_manifest(out: str, key: dict[str, str], planned: set[str]) -> dict[str, Any] | None:
    """The manifest of an earlier run into OUT: returned when it holds exactly this plan (a no-op),
    an error when it was made from other inputs, else removed (the folder is rebuilt and re-committed)."""
    uri = storage.join(out, MANIFEST)
    if not storage.exists(uri):
        return None
    doc = storage.read_json(uri)
    if doc.get("identity") != key:
        raise UserError(f"{uri}: {out} holds predictions of other weights, protocol or source ({doc.get('identity')}); "
                        "choose another --out, or delete that folder to replace them")
    if set(doc.get("files", {})) == planned:
        try:
            storage.check_manifest(out, MANIFEST)
            return doc
        except storage.IncompleteError:
            pass
    storage.delete(uri)
    return None


def summary(doc: dict[str, Any], out: str, failures: list[tuple[str, str]], seconds: float) -> str:
    """The one-screen report printed at the end."""
    c, r, w, p = doc["counts"], doc["this_run"], doc["weights"], doc["protocol"]
    lines = [f"infer: {c['read']} images read, {c['predicted']} predicted, {c['failed']} failed, "
             f"{c['detections']} detections in {len(doc['files'])} file(s)",
             f"  this run: {r['images']} images in {r['seconds']:.1f} s ({r['images_per_s']:.1f} img/s; first rows "
             f"after {r['first_rows_s']:.1f} s), "
             f"{r['files_reused']} file(s) already written and kept; {seconds:.1f} s in all",
             f"  weights:  {w['uri']} (sha256 {w['sha256'][:12]}, {w['variant']}, {w['num_classes']} classes)",
             f"  protocol: {doc['protocol_hash']} (imgsz {p['imgsz']}, conf {p['conf']}, iou {p['iou']}, "
             f"max_det {p['max_det']}; EXIF orientation applied)",
             f"  output:   {out} ({len(doc['files'])} Parquet file(s) + {MANIFEST}); "
             f"read with pandas.read_parquet({out!r})"]
    for uri, error in failures[:8]:
        lines.append(f"  failed:   {error if error.startswith(uri) else f'{uri}: {error}'}"[:200])
    if len(failures) > 8:
        lines.append(f"  ... and {len(failures) - 8} more failures (the `error` column)")
    return "\n".join(lines)
