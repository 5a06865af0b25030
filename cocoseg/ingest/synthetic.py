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
from cocoseg.structures import COCO80_TO_COCO91, COCO_CLASS_NAMES

__all__ = ["COCO_SIZES", "SHAPES", "make_coco_like_image", "make_image", "shape_polygon", "write_coco_like",
           "write_synthetic_coco"]

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
               max_instances: int, radius: tuple[float, float] = (0.10, 0.22),
               colour_by_class: bool = True) -> tuple[Image.Image, list[tuple[int, np.ndarray]]]:
    """Image ``index`` of the dataset: (RGB PIL image, [(class index, polygon (V, 2) px)]).

    ``radius`` is the range of a shape's radius as a fraction of the shorter side. With
    ``colour_by_class=False`` every shape gets a random colour, so only its geometry names its class.
    """
    rng = np.random.default_rng([seed, index])
    img = Image.fromarray(_background(rng, width, height))
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    placed: list[tuple[float, float, float]] = []
    shapes = []
    for _ in range(int(rng.integers(1, max_instances + 1))):
        for _attempt in range(50):
            r_px = rng.uniform(*radius) * side
            cx = rng.uniform(r_px + 1, width - r_px - 1)
            cy = rng.uniform(r_px + 1, height - r_px - 1)
            if all(math.hypot(cx - x, cy - y) > r_px + r + 2 for x, y, r in placed):
                break
        else:
            continue
        placed.append((cx, cy, r_px))
        cls = int(rng.integers(len(classes)))
        poly = shape_polygon(classes[cls], cx, cy, r_px, rng.uniform(0, 2 * np.pi)).round(2)
        if colour_by_class:
            colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in SHAPES[classes[cls]])
        else:
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
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
                         classes: tuple[str, ...] = tuple(SHAPES), quality: int = 90,
                         radius: tuple[float, float] = (0.10, 0.22), colour_by_class: bool = True) -> dict[str, Any]:
    """Write ``images`` synthetic images (``size`` = (width, height) px) with COCO annotations.

    The defaults give an easy set (large shapes, one colour per class) that a small network
    masters in a few epochs. Smaller ``radius`` (fraction of the shorter side), more
    ``max_instances`` and ``colour_by_class=False`` (class told by geometry only) make a harder one.

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
        img, shapes = make_image(seed, image_id, width, height, classes, max_instances, radius, colour_by_class)
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


# ---------------------------------------------------------------------------------------------
# COCO-shaped data for scale benchmarks: COCO 2017's per-image statistics, not a learnable task.

# (width, height) -> share of COCO train2017 images (the most common sizes; the rest of COCO's
# long tail is folded into them, so the mean stays ~578x484 px like COCO's).
COCO_SIZES: dict[tuple[int, int], float] = {
    (640, 480): 0.50, (640, 427): 0.18, (480, 640): 0.10, (640, 428): 0.06, (640, 426): 0.05,
    (427, 640): 0.05, (500, 375): 0.03, (640, 360): 0.03,
}
_CROWD_SHARE = 0.009  # COCO train2017: 7,037 of 860,001 instances are crowd regions (RLE)
_NOISE_TILES = 8


def _noise_tiles(seed: int) -> np.ndarray:
    """(T, 640, 640, 3) int16 noise fields, cropped per image: full-resolution noise gives JPEGs of
    COCO's size (~150 KB at quality 90) at a fraction of the cost of drawing it per image."""
    rng = np.random.default_rng([seed, 0x6E6F6973])
    return rng.normal(0, 20, size=(_NOISE_TILES, 640, 640, 3)).astype(np.int16)


def _instance_count(rng: np.random.Generator) -> int:
    # COCO: mean 7.3 instances per image, 1..~90, long tail; geometric around the mean.
    return int(min(60, 1 + rng.geometric(1 / 6.3) - 1 + rng.integers(0, 2)))


def make_coco_like_image(seed: int, index: int, tiles: np.ndarray) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Image ``index``: a COCO-sized RGB image and its instances ``[{"category_id", "poly" (V, 2) px,
    "iscrowd"}]``. Objects overlap freely and span COCO's size range (about 40 % small, < 32 px)."""
    rng = np.random.default_rng([seed, index, 0x636F636F])
    sizes = list(COCO_SIZES)
    width, height = sizes[int(rng.choice(len(sizes), p=np.asarray(list(COCO_SIZES.values())) / sum(COCO_SIZES.values())))]
    tile = tiles[int(rng.integers(len(tiles)))]
    oy, ox = int(rng.integers(0, 641 - height)), int(rng.integers(0, 641 - width))
    base = rng.uniform(60, 180, size=3)
    img = np.clip(tile[oy:oy + height, ox:ox + width] + base, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    side = min(width, height)
    instances = []
    for _ in range(_instance_count(rng)):
        radius = float(np.exp(rng.uniform(np.log(5.0), np.log(0.4 * side))))
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        shape = tuple(SHAPES)[int(rng.integers(len(SHAPES)))]
        poly = shape_polygon(shape, cx, cy, radius, rng.uniform(0, 2 * np.pi)).round(2)
        draw.polygon([tuple(p) for p in poly], fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
        instances.append({"category_id": int(COCO80_TO_COCO91[int(rng.integers(80))]), "poly": poly,
                          "iscrowd": bool(rng.random() < _CROWD_SHARE)})
    return pil, instances


def _coco_like_annotation(ann_id: int, image_id: int, inst: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    poly = inst["poly"]
    flat = [float(v) for v in poly.reshape(-1)]
    rle = mask_utils.frPyObjects([flat], height, width)[0]
    x0, y0 = np.clip(poly.min(axis=0), 0, None)
    x1, y1 = np.minimum(poly.max(axis=0), (width, height))
    segmentation: Any = [flat]
    if inst["iscrowd"]:  # COCO stores crowd regions as uncompressed RLE (a counts list)
        segmentation = {"size": [height, width], "counts": _uncompressed_counts(mask_utils.decode(rle))}
    return {"id": ann_id, "image_id": image_id, "category_id": inst["category_id"], "iscrowd": int(inst["iscrowd"]),
            "segmentation": segmentation, "area": float(mask_utils.area(rle)),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a binary (H, W) mask: run lengths in column-major order, zeros first."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.r_[0, change, flat.size]
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def write_coco_like(dest: str, train_images: int, val_images: int, seed: int = 0, quality: int = 90,
                    threads: int = 2) -> dict[str, Any]:
    """Write a COCO-2017-layout set with COCO's per-image statistics (sizes, ~7 instances,
    polygons and ~1 % crowd RLE, the 80 COCO category ids) for scale benchmarks.

    Same layout as :func:`write_synthetic_coco` (``annotations/instances_{train,val}.json``,
    ``{train,val}/<id>.jpg``). Images are written as they are made; only their annotations are
    kept until the JSON is written. Returns ``{"root", "splits", "instances", "bytes"}``.
    """
    if train_images < 1 or val_images < 1:
        raise ValueError("write_coco_like: train_images and val_images must be >= 1")
    write = _writer(dest)
    tiles = _noise_tiles(seed)
    categories = [{"id": cid, "name": name, "supercategory": "object"}
                  for cid, name in zip(COCO80_TO_COCO91, COCO_CLASS_NAMES, strict=True)]
    summary: dict[str, Any] = {"root": dest, "splits": {}, "instances": {}, "bytes": 0}

    def build(item: tuple[str, int]) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        split, image_id = item
        img, instances = make_coco_like_image(seed, image_id, tiles)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        file_name = f"{image_id:012d}.jpg"
        write(storage.join(dest, split, file_name), buf.getvalue())
        anns = [_coco_like_annotation(image_id * 1000 + j, image_id, inst, img.width, img.height)
                for j, inst in enumerate(instances)]
        return {"id": image_id, "file_name": file_name, "width": img.width, "height": img.height}, anns, buf.tell()

    first = {"train": 1, "val": train_images + 1}
    for split, n in (("train", train_images), ("val", val_images)):
        imgs, anns = [], []
        with ThreadPoolExecutor(threads) as pool:
            for info, image_anns, size in pool.map(build, [(split, first[split] + k) for k in range(n)]):
                imgs.append(info)
                anns.extend(image_anns)
                summary["bytes"] += size
        doc = {"info": {"description": f"cocoseg COCO-shaped synthetic set, seed {seed}"}, "licenses": [],
               "images": imgs, "annotations": anns, "categories": categories}
        storage.write_text(storage.join(dest, "annotations", f"instances_{split}.json"),
                           json.dumps(doc, separators=(",", ":")))
        summary["splits"][split], summary["instances"][split] = len(imgs), len(anns)
    return summary
