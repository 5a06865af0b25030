"""Batch inference over a folder, an ``s3://`` prefix or a snapshot of images: Ray Data reads the
files, an actor pool runs :class:`cocoseg.inference.PredictImages`, Parquet predictions are written
per chunk (the unit of resume) and ``_manifest.json`` last.

The job ``pipelines.infer`` runs :func:`infer` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from cocoseg import storage
from cocoseg.batch.evaluate import stall_watch
from cocoseg.batch.infer_io import (
    MANIFEST,
    Chunk,
    plan_chunks,
    previous_manifest,
    read_chunks,
    read_part_meta,
    summary,
    weights_identity,
    write_part,
)
from cocoseg.batch.sizing import INFER_READ_CPUS, Pool, local_ray_kwargs, plan_pool
from cocoseg.cluster import start_ray
from cocoseg.config import JobConfig
from cocoseg.config_checks import absolute, prepare, ready, require
from cocoseg.inference import PREDICT, PredictImages, Protocol, resolve_weights
from cocoseg.utils import UserError, get_logger

__all__ = ["infer"]

log = get_logger(__name__)


def _predictions(cfg: JobConfig, weights: str, protocol: Protocol, todo: list[Chunk], pool: Pool):
    """Ray Data: chunk descriptions -> read tasks -> actor pool -> prediction tables to the driver."""
    e = cfg.evaluate
    items = [{"chunk": c.name, "uris": list(c.uris), "label": c.label} for c in todo]
    # One read task per chunk. Its own CPU share keeps Ray Data from fusing it into the actors, so
    # reading (I/O, S3 latency) overlaps the model instead of stalling it.
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_chunks, batch_size=1, batch_format="numpy", num_cpus=INFER_READ_CPUS)
    ds = ds.map_batches(
        PredictImages, fn_constructor_kwargs={"weights": weights, "protocol": protocol.to_dict(),
                                              "device": "cuda" if e.use_gpu else "cpu", "threads": pool.threads},
        batch_size=e.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=e.cpus_per_actor, num_gpus=1 if e.use_gpu else 0)
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _infer(cfg, weights, protocol, todo, out, key) -> tuple[dict[str, dict], list[tuple[str, str]], float]:
    """Run the chunks; each part is written as soon as all its rows are in. Returns the parts'
    entries, the failures, and the seconds before the first rows came back (actor start, model load)."""
    from tqdm import tqdm

    expected = {c.name: c.rows for c in todo}
    pending: dict[str, list[pa.Table]] = defaultdict(list)
    entries, failures, start, first = {}, [], time.perf_counter(), None
    pool = plan_pool(cfg, ray.cluster_resources(), INFER_READ_CPUS, rows=sum(expected.values()))  # before any actor
    log.info("infer: %s, batch %d", pool.describe(), cfg.evaluate.batch_size)
    with tqdm(total=sum(expected.values()), unit="img", desc="infer", mininterval=1.0, file=sys.stderr) as bar, \
            stall_watch(cfg, "infer", pool, INFER_READ_CPUS) as watch:
        for table in _predictions(cfg, weights, protocol, todo, pool):
            watch.tick()
            first = first if first is not None else time.perf_counter() - start
            for name in set(table.column("chunk").to_pylist()):
                pending[name].append(table.filter(pc.equal(table.column("chunk"), name)).drop_columns(["chunk"]))
                if sum(t.num_rows for t in pending[name]) == expected[name]:
                    rows = pa.concat_tables(pending.pop(name))
                    entries[name] = write_part(out, name, rows, key)
                    bad = rows.filter(pc.is_valid(rows.column("error")))
                    failures += zip(bad.column("source_uri").to_pylist(), bad.column("error").to_pylist(), strict=True)
            bar.update(table.num_rows)
    if pending:  # a chunk whose row count differs from its plan: never write a part that is not whole
        raise UserError(f"{len(pending)} chunk(s) came back incomplete ({', '.join(sorted(pending)[:3])}); rerun to resume")
    return entries, failures, first or 0.0


def _finished_parts(out: str, key: dict[str, str], chunks: list[Chunk]) -> tuple[dict[str, str], dict[str, dict]]:
    """OUT's files (name -> URI) and the entries of the parts already written (a resume keeps them)."""
    existing = {f.uri.replace("\\", "/").rsplit("/", 1)[-1]: f.uri for f in storage.list_files(out, recursive=False)}
    for name, uri in existing.items():
        if ".parquet.tmp-" in name:  # a local write cut short by a kill: never committed, so never counted
            storage.delete(uri)
    return existing, {c.name: read_part_meta(existing[c.name], key) for c in chunks if c.name in existing}


def _drop_stale_parts(existing: dict[str, str], planned: set[str], key: dict[str, Any]) -> None:
    """Delete the part files of an earlier listing of the same source and weights that this plan
    no longer has (each is checked to be this job's, by ``key``, before it goes)."""
    for name, uri in existing.items():
        if name.startswith("part-") and name.endswith(".parquet") and name not in planned:
            read_part_meta(uri, key)
            storage.delete(uri)


def infer(cfg: JobConfig, weights: str, source: str, out: str, *, split: str = "") -> dict[str, Any]:
    """Predict every image of ``source`` into ``out``; returns the manifest (plus ``summary`` and ``noop``)."""
    started = time.perf_counter()
    cfg = prepare("infer", cfg)
    # One spelling per place, so a rerun from another working directory is still the same job.
    source, out = (u.rstrip("/") if storage.is_s3(u) else os.path.abspath(u) for u in (source, out))
    weights = absolute(weights)
    require(weights, "WEIGHTS", "the weights", "pass a checkpoint folder (local or s3://) or models:/NAME@ALIAS")
    require(source, "SOURCE", "the source", "pass a folder or s3:// prefix of images, or a snapshot folder")
    ident = weights_identity(weights, resolve_weights(weights))
    e = cfg.evaluate
    protocol = replace(PREDICT, imgsz=e.imgsz or ident["imgsz"], conf=e.predict_conf, iou=e.iou, max_det=e.max_det)
    key = {"source": source, "weights_sha256": ident["sha256"], "protocol_hash": protocol.hash()}
    described, chunks = plan_chunks(source, out, e.chunk_images, split)
    previous = previous_manifest(out, key, {c.name for c in chunks})
    if previous is not None:
        msg = (f"nothing to do: {out} already holds these predictions ({previous['counts']['read']} images, same "
               f"weights {ident['sha256'][:12]}, protocol {key['protocol_hash']}, source listing)")
        print(msg)
        return {**previous, "noop": True, "summary": msg}
    existing, entries = _finished_parts(out, key, chunks)
    todo = [c for c in chunks if c.name not in entries]
    log.info("infer: %d chunk(s) planned, %d already written, %d to run", len(chunks), len(entries), len(todo))
    failures: list[tuple[str, str]] = []
    startup = 0.0
    t0 = time.perf_counter()
    ready("infer", cfg, {"weights": weights, "source": source, "out": out, "chunks": len(todo)})
    if todo:
        start_ray(**local_ray_kwargs(INFER_READ_CPUS))  # RAY_ADDRESS, else a local Ray
        t0 = time.perf_counter()  # images/s of the job, not of a local Ray's start-up
        new, failures, startup = _infer(cfg, weights, protocol, todo, out, key)
        entries.update(new)
    seconds = time.perf_counter() - t0
    _drop_stale_parts(existing, {c.name for c in chunks}, key)
    files = {c.name: entries[c.name] for c in chunks}
    read_now = sum(c.rows for c in todo)
    counts = {k: sum(f[v] for f in files.values()) for k, v in
              (("read", "rows"), ("failed", "failed"), ("detections", "detections"))}
    counts["predicted"] = counts["read"] - counts["failed"]
    doc = {"kind": "cocoseg-predictions", "identity": key, "source": described, "weights": ident,
           "protocol": protocol.to_dict(), "protocol_hash": protocol.hash(), "exif": "applied (decode_image)",
           "counts": counts, "this_run": {"images": read_now, "seconds": round(seconds, 3),
                                          "images_per_s": round(read_now / max(seconds, 1e-9), 3),
                                          "first_rows_s": round(startup, 3),
                                          "files_reused": len(chunks) - len(todo)},
           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": files}
    storage.write_json(storage.join(out, MANIFEST), doc)  # last: the folder is complete from here on
    doc["summary"] = summary(doc, out, failures, time.perf_counter() - started)
    print(doc["summary"])
    return {**doc, "noop": False}
