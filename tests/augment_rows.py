"""Snapshot-shaped rows drawn with Pillow, for the augmentation, collate and input-pipeline tests.

A row follows the snapshot schema (one image): ``image`` encoded bytes, ``width``, ``height``,
``image_id``, ``annotations`` = list of dicts with ``id``, ``category`` (0..79), ``bbox_xywh``
(pixels), ``area``, ``iscrowd``, ``polygons`` (list of flat [x0, y0, x1, y1, ...] pixel lists),
``rle_counts``. Shapes are filled polygons in a distinct colour per class on a dark background,
so a polygon's pixels can be recovered from the image by colour.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from cocoseg.data.schema import SNAPSHOT_SCHEMA

COLOURS = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40)]

SCHEMA = SNAPSHOT_SCHEMA  # the ingest area's Parquet schema: rows written here are snapshot rows

def _shape(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random convex-ish polygon (a rectangle, triangle or diamond) of (m, 2) pixel points."""
    cw, ch = rng.uniform(0.15, 0.4) * w, rng.uniform(0.15, 0.4) * h
    cx, cy = rng.uniform(cw / 2 + 1, w - cw / 2 - 1), rng.uniform(ch / 2 + 1, h - ch / 2 - 1)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif kind == 1:
        pts = [(0, -1), (1, 1), (-1, 1)]
    else:
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    return np.array([(cx + x * cw / 2, cy + y * ch / 2) for x, y in pts], np.float32)


def make_row(image_id: int, size_wh: tuple[int, int] = (160, 120), *, seed: int = 0, instances: int = 2,
             mode: str = "RGB", fmt: str = "JPEG", crowd: bool = False) -> dict:
    """One snapshot row with ``instances`` non-overlapping-ish filled shapes (plus one crowd region)."""
    rng = np.random.default_rng([seed, image_id])
    w, h = size_wh
    img = Image.new("RGB", (w, h), (20, 20, 20))
    draw = ImageDraw.Draw(img)
    annotations = []
    for k in range(instances):
        cat = int(rng.integers(0, len(COLOURS)))
        poly = _shape(rng, w, h)
        draw.polygon([tuple(p) for p in poly], fill=COLOURS[cat])
        x0, y0 = poly.min(0)
        x1, y1 = poly.max(0)
        annotations.append({"id": image_id * 100 + k, "category": cat, "category_id": cat + 1,
                            "bbox_xywh": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "area": float((x1 - x0) * (y1 - y0)), "iscrowd": False,
                            "polygons": [poly.ravel().tolist()], "rle_counts": None})
    if crowd:
        annotations.append({"id": image_id * 100 + 99, "category": 0, "category_id": 1,
                            "bbox_xywh": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "iscrowd": True,
                            "polygons": [], "rle_counts": "0 100"})
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=95) if fmt == "JPEG" else img.save(buf, format=fmt)
    return {"image_id": image_id, "file_name": f"{image_id:012d}.jpg", "split": "train", "width": w,
            "height": h, "image": buf.getvalue(), "annotations": annotations}


def make_rows(n: int, size_wh: tuple[int, int] = (160, 120), *, seed: int = 0, instances: int = 2) -> list[dict]:
    return [make_row(i + 1, size_wh, seed=seed, instances=instances) for i in range(n)]


def write_split(rows: list[dict], folder: Path, rows_per_file: int = 64) -> list[str]:
    """Write rows as ``part-00000.parquet``, ... under ``folder``; returns the file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(rows), rows_per_file):
        path = folder / f"part-{i // rows_per_file:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[i:i + rows_per_file], schema=SCHEMA), path)
        paths.append(str(path))
    return paths
