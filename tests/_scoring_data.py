"""COCO-shaped scoring inputs for the scorer parity test and the scoring benchmark: ground truth
with polygon masks at COCO's image sizes, and ``per_image`` detections per image as cocoseg
:class:`~cocoseg.structures.Detections` (RLE masks, as evaluation post-processing hands them over):
a jittered copy of each object (some with the wrong class), the rest scattered boxes and blobs."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from cocoseg.structures import Detections

SIZES = ((640, 480), (480, 640), (640, 427), (500, 375))  # (w, h): common COCO shapes


def _polygon(rng: np.random.Generator, x: float, y: float, w: float, h: float, points: int = 12) -> list[float]:
    """A star-ish polygon inside the box (x, y, w, h), as COCO's flat [x0, y0, x1, y1, ...]."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radius = rng.uniform(0.6, 1.0, points)
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return np.stack([xs, ys], 1).round(2).ravel().tolist()


def coco_gt(images: int, *, classes: int = 10, objects: tuple[int, int] = (3, 15), seed: int = 0) -> dict:
    """A COCO dict: ``images`` images, ``objects`` instances each (polygons, some crowd-free)."""
    rng = np.random.default_rng(seed)
    imgs, anns = [], []
    for i in range(images):
        w, h = SIZES[i % len(SIZES)]
        imgs.append({"id": i + 1, "width": w, "height": h, "file_name": f"{i + 1:012d}.jpg"})
        for _ in range(int(rng.integers(*objects))):
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            poly = _polygon(rng, bx, by, bw, bh)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, classes + 1)),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                         "segmentation": [poly], "iscrowd": 0})
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, classes + 1)]
    return {"images": imgs, "annotations": anns, "categories": cats}


def detections(gt: dict, per_image: int, *, seed: int = 1) -> dict[int, Detections]:
    """{image id: Detections} with ``per_image`` detections per image (model classes 0-based)."""
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    classes = len(gt["categories"])
    out = {}
    for img in gt["images"]:
        w, h = img["width"], img["height"]
        boxes, scores, cls, polys = [], [], [], []
        for a in by_image.get(img["id"], [])[:per_image]:
            x, y, bw, bh = a["bbox"]
            dx, dy = rng.normal(0, 0.08 * bw), rng.normal(0, 0.08 * bh)
            sw, sh = bw * rng.uniform(0.85, 1.15), bh * rng.uniform(0.85, 1.15)
            boxes.append([x + dx, y + dy, x + dx + sw, y + dy + sh])
            polys.append([v + (dx if k % 2 == 0 else dy) for k, v in enumerate(a["segmentation"][0])])
            cls.append(a["category_id"] - 1 if rng.random() > 0.15 else int(rng.integers(0, classes)))
            scores.append(rng.uniform(0.3, 1.0))
        while len(boxes) < per_image:
            bw, bh = rng.uniform(4, w / 3), rng.uniform(4, h / 3)
            bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes.append([bx, by, bx + bw, by + bh])
            polys.append(_polygon(rng, bx, by, bw, bh, points=8))
            cls.append(int(rng.integers(0, classes)))
            scores.append(rng.uniform(0.001, 0.6))
        rles = [mask_utils.merge(mask_utils.frPyObjects([p], h, w)) for p in polys]
        for r in rles:
            r["counts"] = r["counts"].decode() if isinstance(r["counts"], bytes) else r["counts"]
        out[img["id"]] = Detections(boxes_xyxy=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                                    scores=torch.tensor(scores, dtype=torch.float32),
                                    classes=torch.tensor(cls, dtype=torch.int64), masks_rle=rles)
    return out
