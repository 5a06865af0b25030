"""Cost of the promotion gate's paired bootstrap (issue 23, item 2). A plain script:

    python tests/benchmarks/bench_bootstrap.py [--images 1000] [--classes 80] [--objects 7] [--dets 30]
        [--resamples 1000]

A COCO-like case: ``--images`` images, ``--classes`` classes, about ``--objects`` objects and
``--dets`` detections per image (found objects with jittered boxes plus false positives),
scored once by pycocotools into per-image matches (``cocoseg.metrics.bootstrap.collect_matches``,
box IoU). Prints the process CPU seconds (and wall) of COCOeval's evaluate for one model, and of
``paired_bootstrap`` over ``--resamples`` resamples of two models, scaled to seconds per 1,000
resamples per 1,000 images, with the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

import numpy as np


def case(images: int, classes: int, objects: int, dets: int, seed: int, quality: float) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(0)  # the ground truth is shared by both models
    gt = {"images": [{"id": i, "width": 640, "height": 480} for i in range(1, images + 1)],
          "categories": [{"id": k, "name": f"c{k}"} for k in range(1, classes + 1)], "annotations": []}
    for i in range(1, images + 1):
        for _ in range(max(1, int(rng.poisson(objects)))):
            w, h = rng.uniform(10, 200, 2)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "iscrowd": 0, "area": w * h,
                                      "category_id": int(rng.integers(1, classes + 1)),
                                      "bbox": [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), w, h]})
    rng = np.random.default_rng(seed)
    out = []
    per_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    for i, anns in per_image.items():
        for a in anns:
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 1 - quality, 4) * [w, h, w, h] * 0.2
            out.append({"image_id": i, "category_id": a["category_id"], "score": float(rng.uniform(0.3, 1)),
                        "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]})
        for _ in range(max(0, dets - len(anns))):
            w, h = rng.uniform(10, 100, 2)
            out.append({"image_id": i, "category_id": int(rng.integers(1, classes + 1)), "score": float(rng.uniform(0, 0.5)),
                        "bbox": [float(rng.uniform(0, 600)), float(rng.uniform(0, 440)), w, h]})
    return gt, out


def main() -> int:
    from pycocotools.coco import COCO

    from cocoseg.metrics.bootstrap import collect_matches, paired_bootstrap

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--objects", type=int, default=7)
    parser.add_argument("--dets", type=int, default=30)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    start_load = round(os.getloadavg()[0], 2)
    gt, a = case(args.images, args.classes, args.objects, args.dets, seed=1, quality=0.9)
    _, b = case(args.images, args.classes, args.objects, args.dets, seed=2, quality=0.7)
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    ids, cats = [i["id"] for i in gt["images"]], [c["id"] for c in gt["categories"]]
    c0, w0 = time.process_time(), time.perf_counter()
    ma = collect_matches(coco, a, "bbox", ids, cats)
    match_cpu, match_wall = time.process_time() - c0, time.perf_counter() - w0
    mb = collect_matches(coco, b, "bbox", ids, cats)
    c0, w0 = time.process_time(), time.perf_counter()
    result = paired_bootstrap(ma, mb, resamples=args.resamples, seed=0)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    scale = (1000 / args.resamples) * (1000 / args.images)
    print(f"{args.images} images, {args.classes} classes, {len(gt['annotations'])} objects, {len(a)} + {len(b)} "
          f"detections; AP {result.challenger_ap:.4f} vs {result.champion_ap:.4f}, difference "
          f"{result.difference:+.4f} [{result.low:+.4f}, {result.high:+.4f}]")
    print(f"COCOeval evaluate + matches, one model: {match_cpu:.2f} s CPU ({match_wall:.2f} s wall)")
    print(f"paired bootstrap, {args.resamples} resamples: {cpu:.2f} s CPU ({wall:.2f} s wall) = "
          f"{cpu * scale:.2f} s CPU per 1,000 resamples per 1,000 images")
    print(f"load average (1 min): {start_load} at the start, {round(os.getloadavg()[0], 2)} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
