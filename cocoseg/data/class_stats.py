"""What a snapshot holds per class: the statistics ingest records in the manifest, and readers.

Ingest counts, per split and per class (contiguous index 0..nc-1), the images holding the class,
its instances and their COCO size buckets (mask area < 32^2 px: small, < 96^2: medium, else large,
as pycocotools' ``areaRng``), plus the images without instances and the crowd regions (kept out of
the per-class counts: they are neither trained on as instances nor scored). The manifest holds
them as ``splits.<split>.stats``::

    {"empty_images": 12, "crowd_instances": 3,
     "classes": {"images": [...], "instances": [...], "small": [...], "medium": [...], "large": [...]}}

Used by the ingest summary (:func:`format_class_table`), the train job's warning about classes with
fewer than :data:`RARE_INSTANCES` training instances (:func:`rare_classes`), its MLflow table and
chart, and repeat-factor sampling (:func:`read_image_classes`). Snapshots ingested before these
statistics existed have no ``stats``: :func:`split_stats` returns None for them.

Layer L1 (data): no Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cocoseg import storage

from .manifest import Manifest

__all__ = ["COLUMNS", "RARE_INSTANCES", "SMALL_AREA", "MEDIUM_AREA", "class_rows", "format_class_table",
           "merge_stats", "rare_classes", "read_image_classes", "split_stats", "tally"]

SMALL_AREA = 32 ** 2  # px^2 of the original image: COCO's small/medium/large
MEDIUM_AREA = 96 ** 2
# A class with fewer training instances than this is hard to learn and its AP is noise (a few
# instances decide it): the train job warns (docs/data.md) and suggests repeat-factor sampling.
RARE_INSTANCES = 10
COLUMNS = ("images", "instances", "small", "medium", "large")


def _empty(num_classes: int) -> dict[str, Any]:
    return {"empty_images": 0, "crowd_instances": 0, "classes": {k: [0] * num_classes for k in COLUMNS}}


def tally(annotation_lists: Iterable[Sequence[Mapping[str, Any]]], num_classes: int) -> dict[str, Any]:
    """The statistics of some images: ``annotation_lists`` holds, per image, its snapshot
    annotations (``category``, ``area`` in px^2, ``iscrowd``)."""
    out = _empty(num_classes)
    cls = out["classes"]
    for anns in annotation_lists:
        present = set()
        for ann in anns:
            if ann["iscrowd"]:
                out["crowd_instances"] += 1
                continue
            c = int(ann["category"])
            present.add(c)
            cls["instances"][c] += 1
            area = float(ann["area"])
            cls["small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"][c] += 1
        out["empty_images"] += not present
        for c in present:
            cls["images"][c] += 1
    return out


def merge_stats(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> dict[str, Any]:
    """The sum of two :func:`tally` results (``a`` None: a copy of ``b``)."""
    if a is None:
        return {"empty_images": b["empty_images"], "crowd_instances": b["crowd_instances"],
                "classes": {k: list(v) for k, v in b["classes"].items()}}
    return {"empty_images": a["empty_images"] + b["empty_images"],
            "crowd_instances": a["crowd_instances"] + b["crowd_instances"],
            "classes": {k: [x + y for x, y in zip(a["classes"][k], b["classes"][k], strict=True)] for k in COLUMNS}}


def split_stats(manifest: Manifest, split: str = "train") -> Mapping[str, Any] | None:
    """``splits.<split>.stats`` of a manifest, or None (no such split, or an older snapshot)."""
    entry = manifest.splits.get(split)
    return entry.stats if entry is not None else None


def class_rows(manifest: Manifest, split: str = "train") -> list[dict[str, Any]]:
    """One row per class: ``{"class", "images", "instances", "small", "medium", "large"}`` (class order)."""
    stats = split_stats(manifest, split)
    if stats is None:
        return []
    names = list(manifest.class_names)
    return [{"class": name, **{k: int(stats["classes"][k][i]) for k in COLUMNS}} for i, name in enumerate(names)]


def format_class_table(manifest: Manifest, split: str = "train", top: int = 8) -> str:
    """A compact text table of ``split``'s classes by instance count: all of them up to ``2 x top``
    classes, else the ``top`` most and ``top`` least frequent with a line for the ones left out."""
    rows = sorted(class_rows(manifest, split), key=lambda r: (-r["instances"], r["class"]))
    if not rows:
        return f"  {split}: no per-class statistics (snapshot ingested by an older cocoseg)"
    stats = split_stats(manifest, split) or {}
    width = max(12, *(len(r["class"]) for r in rows))
    lines = [f"  {split} classes by instances ({len(rows)}; {stats.get('empty_images', 0)} images without instances, "
             f"{stats.get('crowd_instances', 0)} crowd regions):",
             f"    {'class':<{width}} {'images':>8} {'instances':>9} {'small':>7} {'medium':>7} {'large':>7}"]
    shown = rows if len(rows) <= 2 * top else [*rows[:top], None, *rows[-top:]]
    for r in shown:
        if r is None:
            lines.append(f"    ... {len(rows) - 2 * top} classes more ...")
            continue
        flag = "  < rare" if r["instances"] < RARE_INSTANCES else ""
        lines.append(f"    {r['class']:<{width}} {r['images']:>8} {r['instances']:>9} {r['small']:>7} "
                     f"{r['medium']:>7} {r['large']:>7}{flag}")
    return "\n".join(lines)


def rare_classes(manifest: Manifest, split: str = "train",
                 min_instances: int = RARE_INSTANCES) -> list[tuple[str, int]]:
    """``[(class, instances)]`` of the classes with fewer than ``min_instances`` in ``split``, rarest first."""
    rows = [(r["class"], r["instances"]) for r in class_rows(manifest, split) if r["instances"] < min_instances]
    return sorted(rows, key=lambda x: (x[1], x[0]))


def read_image_classes(shard_uris: Sequence[str], limit: int = 0) -> list[list[np.ndarray]]:
    """Per shard, per row: the (k,) int64 classes of the row's non-crowd instances.

    Reads only the ``category`` and ``iscrowd`` leaves of the ``annotations`` column (a few bytes
    per instance, no image bytes), shard by shard, the first ``limit`` rows in all (0: every row).
    """
    out: list[list[np.ndarray]] = []
    left = limit if limit > 0 else 1 << 62
    for uri in shard_uris:
        if left <= 0:
            out.append([])
            continue
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as handle:  # pre_buffer: one coalesced read per row group's leaves
            table = pq.ParquetFile(handle, pre_buffer=True).read(columns=_CLASS_LEAVES)
        col = table.column("annotations").combine_chunks().slice(0, left)
        left -= len(col)
        cut = np.cumsum(np.asarray(col.value_lengths().fill_null(0)))[:-1]
        flat = col.flatten()
        cats = np.split(np.asarray(flat.field("category"), np.int64), cut)
        crowd = np.split(np.asarray(flat.field("iscrowd"), bool), cut)
        out.append([c[~k] for c, k in zip(cats, crowd, strict=True)] if len(col) else [])
    return out


_CLASS_LEAVES = ["annotations.list.element.category", "annotations.list.element.iscrowd"]
