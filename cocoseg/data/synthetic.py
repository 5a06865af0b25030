"""A deterministic, learnable synthetic COCO-Seg dataset.

Each image is a smooth, noisy grey-ish background with 1..``max_instances`` non-overlapping
filled shapes. A shape class has a fixed geometry and a distinct colour (lightly jittered), so
a small network learns it quickly; every mask is *exactly* its polygon (the shape is drawn from
the same vertices that the annotation stores, and shapes never overlap, so no instance is
occluded).

Layout written (COCO 2017 style, so ``cocoseg ingest DEST ...`` reads it as is)::

    <dest>/annotations/instances_train.json   <dest>/train/000000000001.jpg ...
    <dest>/annotations/instances_val.json     <dest>/val/...

Image ``k`` (1-based, train first) depends only on ``(seed, k)``: the same arguments always give
byte-identical files. ``dest`` may be a local folder or ``s3://bucket/prefix``.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cocoseg import storage

__all__ = ["SHAPES", "make_image", "shape_polygon", "write_synthetic_coco"]

# Shape class -> base RGB colour; in a dataset the category id of classes[i] is i + 1.
SHAPES: dict[str, tuple[int, int, int]] = {
    "circle": (220, 50, 50),
    "square": (50, 190, 70),
    "triangle": (50, 90, 225),
    "star": (235, 200, 40),
}


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) float64, pixels, of ``shape`` centred at (cx, cy) within ``radius``."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = np.full_like(t, radius)
    elif shape == "square":
        t = angle + np.arange(4) * np.pi / 2 + np.pi / 4
        r = np.full_like(t, radius)
    elif shape == "triangle":
        t = angle + np.arange(3) * 2 * np.pi / 3
        r = np.full_like(t, radius)
    elif shape == "star":
        t = angle + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.uniform(70, 170) + rng.uniform(-15, 15, size=3)
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    slope = rng.uniform(-30, 30, size=2)
    ramp = slope[0] * gx / width + slope[1] * gy / height
    img = base[None, None, :] + ramp[..., None] + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image(seed: int, index: int, width: int, height: int, classes: tuple[str, ...],
               max_instances: int) -> tuple[Image.Image, list[tuple[int, np.ndarray]]]:
    """Image ``index`` of the dataset: (RGB PIL image, [(class index, polygon (V, 2) px)])."""
    rng = np.random.default_rng([seed, index])
    img = Image.fromarray(_background(rng, width, height))
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    placed: list[tuple[float, float, float]] = []
    shapes = []
    for _ in range(int(rng.integers(1, max_instances + 1))):
        for _attempt in range(50):
            radius = rng.uniform(0.10, 0.22) * side
            cx = rng.uniform(radius + 1, width - radius - 1)
            cy = rng.uniform(radius + 1, height - radius - 1)
            if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
                break
        else:
            continue
        placed.append((cx, cy, radius))
        cls = int(rng.integers(len(classes)))
        poly = shape_polygon(classes[cls], cx, cy, radius, rng.uniform(0, 2 * np.pi)).round(2)
        colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in SHAPES[classes[cls]])
        draw.polygon([tuple(p) for p in poly], fill=colour)
        shapes.append((cls, poly))
    return img, shapes


def _annotation(ann_id: int, image_id: int, cls: int, poly: np.ndarray, width: int, height: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    flat = [float(v) for v in poly.reshape(-1)]
    rle = mask_utils.frPyObjects([flat], height, width)
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    return {"id": ann_id, "image_id": image_id, "category_id": cls + 1, "iscrowd": 0,
            "segmentation": [flat], "area": float(mask_utils.area(rle).sum()),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]}


def _writer(dest: str):
    if storage.is_s3(dest):
        return storage.write_bytes

    def write_local(uri: str, data: bytes) -> None:  # plain writes: fsync per image is needlessly slow
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return write_local


def write_synthetic_coco(dest: str, images: int = 200, size: tuple[int, int] = (160, 128), seed: int = 0,
                         val_fraction: float = 0.2, max_instances: int = 4,
                         classes: tuple[str, ...] = tuple(SHAPES), quality: int = 90) -> dict[str, Any]:
    """Write ``images`` synthetic images (``size`` = (width, height) px) with COCO annotations.

    ``round(images * val_fraction)`` images go to ``val``, the rest to ``train``. Returns a
    summary: ``{"root", "splits": {split: images}, "instances": {split: n}, "class_names"}``.
    The annotation files are written after all images, so a reader seeing them sees a complete set.
    """
    if images < 1:
        raise ValueError("images must be >= 1")
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape classes {unknown}; choose from {', '.join(SHAPES)}")
    width, height = size
    n_val = int(round(images * val_fraction))
    split_of = ["train"] * (images - n_val) + ["val"] * n_val
    write = _writer(dest)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)]

    def build(index: int) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        image_id = index + 1
        img, shapes = make_image(seed, image_id, width, height, classes, max_instances)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        file_name = f"{image_id:012d}.jpg"
        write(storage.join(dest, split_of[index], file_name), buf.getvalue())
        anns = [_annotation(image_id * 100 + j, image_id, cls, poly, width, height)
                for j, (cls, poly) in enumerate(shapes)]
        return split_of[index], {"id": image_id, "file_name": file_name, "width": width, "height": height}, anns

    with ThreadPoolExecutor(8 if storage.is_s3(dest) else 2) as pool:
        results = list(pool.map(build, range(images)))
    summary: dict[str, Any] = {"root": dest, "splits": {}, "instances": {}, "class_names": list(classes)}
    for split in ("train", "val"):
        imgs = [r[1] for r in results if r[0] == split]
        anns = [a for r in results if r[0] == split for a in r[2]]
        if not imgs:
            continue
        doc = {"info": {"description": f"cocoseg synthetic shapes, seed {seed}"}, "licenses": [],
               "images": imgs, "annotations": anns, "categories": categories}
        storage.write_text(storage.join(dest, "annotations", f"instances_{split}.json"),
                           json.dumps(doc, separators=(",", ":")))
        summary["splits"][split], summary["instances"][split] = len(imgs), len(anns)
    return summary
