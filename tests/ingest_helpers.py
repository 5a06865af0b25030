"""Helpers for the ingest tests: a small synthetic source with one crafted bad record per reason."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from PIL import Image

from cocoseg.ingest.synthetic import write_synthetic_coco

# reason -> (images quarantined, instances quarantined) that make_bad_source() produces
EXPECTED_REJECTS = {
    "unreadable_image": (1, None), "truncated_image": (1, None), "corrupt_image": (1, None),
    "missing_file": (1, None), "size_mismatch": (1, None), "duplicate_image_id": (1, 0),
    "polygon_too_few_points": (0, 1), "non_finite_coordinates": (0, 1), "box_outside_image": (0, 1),
    "box_non_positive": (0, 1), "unknown_category": (0, 1), "bad_rle": (0, 1), "orphan_annotation": (0, 1),
}


def make_source(root: Path, images: int = 24, seed: int = 0, size=(64, 48)) -> dict:
    return write_synthetic_coco(str(root), images=images, size=size, seed=seed, val_fraction=0.25)


def make_bad_source(root: Path) -> dict:
    """A 24-image synthetic source (18 train) where train images 1..6 and some instances are broken.

    Returns the train JSON as written. Images 7 and 8 are re-encoded as greyscale and CMYK JPEGs
    (valid). The crafted annotations are *added*, so the original instances all stay valid.
    """
    make_source(root)
    ann_path = root / "annotations" / "instances_train.json"
    doc = json.loads(ann_path.read_text())
    img_dir = root / "train"
    by_id = {im["id"]: im for im in doc["images"]}
    path = lambda i: img_dir / by_id[i]["file_name"]  # noqa: E731
    path(1).write_bytes(b"this is not an image at all")                       # unreadable_image
    data = path(2).read_bytes()
    path(2).write_bytes(data[: len(data) // 2])                               # truncated_image
    data = path(3).read_bytes()
    path(3).write_bytes(data[:600] + bytes(range(256)) * 2 + data[1112:])     # corrupt_image
    path(4).unlink()                                                          # missing_file
    by_id[5]["width"] += 7                                                    # size_mismatch
    doc["images"].append({**by_id[6], "file_name": by_id[9]["file_name"]})   # duplicate_image_id
    for i, mode in ((7, "L"), (8, "CMYK")):                                   # accepted colour modes
        buf = io.BytesIO()
        Image.open(path(i)).convert(mode).save(buf, format="JPEG", quality=90)
        path(i).write_bytes(buf.getvalue())
    base = {"image_id": 10, "category_id": 1, "iscrowd": 0, "area": 50.0}
    square = [[10, 10, 20, 10, 20, 20, 10, 20]]
    extra = [
        {**base, "id": 90001, "segmentation": [[10, 10, 20, 10]], "bbox": [10, 10, 10, 10]},
        {**base, "id": 90002, "segmentation": [[10, 10, math.nan, 10, 20, 20]], "bbox": [10, 10, 10, 10]},
        {**base, "id": 90003, "segmentation": square, "bbox": [40, 10, 40, 10]},
        {**base, "id": 90004, "segmentation": square, "bbox": [10, 10, 0, 10]},
        {**base, "id": 90005, "segmentation": square, "bbox": [10, 10, 10, 10], "category_id": 99},
        {**base, "id": 90006, "segmentation": {"size": [5, 5], "counts": [0, 25]}, "bbox": [0, 0, 5, 5],
         "iscrowd": 1},
        {**base, "id": 90007, "segmentation": square, "bbox": [10, 10, 10, 10], "image_id": 424242},
        # a valid crowd region, uncompressed RLE at the image size (64x48): the left 2 columns
        {**base, "id": 90008, "segmentation": {"size": [48, 64], "counts": [0, 96, 64 * 48 - 96]},
         "bbox": [0, 0, 2, 48], "iscrowd": 1, "area": 96.0},
    ]
    doc["annotations"].extend(extra)
    ann_path.write_text(json.dumps(doc))  # json writes NaN as a bare token, which json.loads reads back
    return doc
