"""The synthetic COCO-Seg generator: deterministic, exact polygon masks, local and S3."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from cocoseg import storage
from cocoseg.ingest.synthetic import SHAPES, write_synthetic_coco


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    return ~_dilate(~mask, k)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_synthetic_coco(str(tmp_path / "a"), images=12, size=(64, 48), seed=3)
    write_synthetic_coco(str(tmp_path / "b"), images=12, size=(64, 48), seed=3)
    write_synthetic_coco(str(tmp_path / "c"), images=12, size=(64, 48), seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert a["splits"] == {"train": 10, "val": 2} and a["class_names"] == list(SHAPES)


def test_masks_are_the_polygons_and_classes_are_distinct_colours(tmp_path):
    write_synthetic_coco(str(tmp_path), images=40, size=(128, 96), seed=0, val_fraction=0.0)
    doc = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert {c["id"]: c["name"] for c in doc["categories"]} == {i + 1: n for i, n in enumerate(SHAPES)}
    per_image = Counter(a["image_id"] for a in doc["annotations"])
    assert set(per_image.values()) <= {1, 2, 3, 4} and len(per_image) == 40
    assert set(Counter(a["category_id"] for a in doc["annotations"])) == {1, 2, 3, 4}
    images = {im["id"]: im for im in doc["images"]}
    for ann in doc["annotations"][:30]:
        im = images[ann["image_id"]]
        pixels = np.asarray(Image.open(tmp_path / "train" / im["file_name"]).convert("RGB"), dtype=np.int32)
        rle = mask_utils.frPyObjects(ann["segmentation"], im["height"], im["width"])
        mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
        assert abs(mask.sum() - ann["area"]) < 1e-6
        colour = np.array(SHAPES[doc["categories"][ann["category_id"] - 1]["name"]])
        close = np.abs(pixels - colour).max(axis=2) <= 45  # jitter 20 + JPEG error
        # The polygon is the painted shape: its interior has the class colour, the ring just
        # outside it does not (2 px margins absorb JPEG chroma blur at the edges).
        inner, outer = _erode(mask, 2), _dilate(mask, 4) & ~_dilate(mask, 2)
        assert close[inner].mean() > 0.97, (ann["id"], close[inner].mean())
        assert close[outer].mean() < 0.05, (ann["id"], close[outer].mean())
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]


def test_writes_to_s3(s3_bucket):
    dest = f"{s3_bucket}/synth"
    summary = write_synthetic_coco(dest, images=6, size=(48, 32), seed=1)
    names = [e.uri.split("/synth/")[1] for e in storage.list_files(dest)]
    assert "annotations/instances_train.json" in names and sum(n.endswith(".jpg") for n in names) == 6
    doc = storage.read_json(f"{dest}/annotations/instances_train.json")
    first = doc["images"][0]
    img = Image.open(io.BytesIO(storage.read_bytes(f"{dest}/train/{first['file_name']}")))
    assert img.size == (48, 32) and summary["splits"]["train"] == len(doc["images"])
