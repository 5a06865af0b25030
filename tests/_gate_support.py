"""Helpers for the gate tests (not a test module): a small COCO ground truth and detections of
chosen quality, scored by the real COCOeval into per-image matches (cocoseg.metrics.bootstrap)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

CLASSES = ("circle", "square", "triangle")


def ground_truth(images: int = 40, seed: int = 0, size: int = 64) -> dict:
    """``images`` images of ``size`` px, 1-3 rectangle objects each, classes drawn from CLASSES."""
    rng = np.random.default_rng(seed)
    anns, imgs = [], []
    for i in range(1, images + 1):
        imgs.append({"id": i, "width": size, "height": size, "file_name": f"{i}.jpg"})
        for _ in range(int(rng.integers(1, 4))):
            w, h = rng.uniform(10, 30, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, len(CLASSES) + 1)),
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    return {"images": imgs, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}


def detections(gt: dict, *, jitter: float, seed: int, miss: float = 0.0, false_pos: int = 1,
               drop_class: str | None = None) -> list[dict]:
    """COCO results: each object found with probability 1 - ``miss`` (box moved by up to ``jitter``
    of its size), ``false_pos`` random boxes per image, every score distinct; ``drop_class``: none
    of that class is found (a collapsed class)."""
    rng = np.random.default_rng(seed)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    size = gt["images"][0]["width"]
    out = []
    for ann in gt["annotations"]:
        if names[ann["category_id"]] == drop_class or rng.random() < miss:
            continue
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.uniform(-jitter, jitter, 4) * [w, h, w, h]
        out.append(_result(ann["image_id"], ann["category_id"], [x + dx, y + dy, w + dw, h + dh], size,
                           rng.uniform(0.5, 1.0)))
    for img in gt["images"]:
        for _ in range(false_pos):
            w, h = rng.uniform(5, 20, 2)
            box = [rng.uniform(0, size - w), rng.uniform(0, size - h), w, h]
            out.append(_result(img["id"], int(rng.integers(1, len(CLASSES) + 1)), box, size, rng.uniform(0.0, 0.6)))
    scores = np.random.default_rng(seed + 1000).permutation(len(out))  # distinct, order-preserving ties never
    for r, rank in zip(sorted(out, key=lambda r: r["score"]), np.sort(scores), strict=True):
        r["score"] = float(0.001 + rank / (len(out) + 1))
    return out


def _result(image_id: int, cat: int, box: list[float], size: int, score: float) -> dict:
    x, y, w, h = (float(v) for v in box)
    w, h = max(w, 1.0), max(h, 1.0)
    rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], size, size)[0]
    rle["counts"] = rle["counts"].decode()
    return {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": float(score), "segmentation": rle}


def coco(gt: dict):
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO

    c = COCO()
    c.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def matches_for(gt: dict, results: list[dict]) -> dict:
    """{iou_type: Matches} of ``results`` on all images of ``gt``."""
    from cocoseg.metrics.bootstrap import collect_matches

    c = coco(gt)
    ids = [i["id"] for i in gt["images"]]
    cats = [k["id"] for k in gt["categories"]]
    return {t: collect_matches(c, results, t, ids, cats) for t in ("bbox", "segm")}


PROVENANCE = {"eval.snapshot_id": "snap-gate", "eval.split": "val", "eval.protocol_hash": "p-gate"}


def evidence_export(root, gt: dict, results: list[dict], *, base, eager_gap: float = 0.0,
                    provenance: dict | None = None):
    """A copy of the TinySeg export ``base`` carrying the served ONNX's per-image matches for ``results`` on ``gt`` (as
    `cocoseg register` writes them) and metrics: the served numbers are the matches' own, the eager
    ones ``eager_gap`` above them (a gap > registry.max_export_drop: an export that lost accuracy)."""
    import json
    import shutil

    from cocoseg.bundle import MANIFEST, write_manifest
    from cocoseg.metrics.bootstrap import save_matches

    export = shutil.copytree(base, root)
    matches = matches_for(gt, results)
    save_matches(export / "matches.npz", matches)
    served = {kind: float(matches[t].ap()[0]) for kind, t in (("mask", "segm"), ("box", "bbox"))}
    metrics = {**PROVENANCE, **(provenance or {}), "eval.images": len(gt["images"]), "eval.scorer": "pycocotools",
               "served.formats": "onnx", "val_snapshot": "snap-gate"}
    for kind, value in served.items():
        metrics[f"val/{kind}_ap50_95"] = value + eager_gap
        metrics[f"served/onnx/{kind}_ap50_95"] = value
        metrics[f"served/onnx/delta_{kind}_ap50_95"] = -eager_gap
    (export / "metrics.json").write_text(json.dumps(metrics))
    manifest = json.loads((export / MANIFEST).read_text())
    write_manifest(export, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    return export
