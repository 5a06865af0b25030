"""COCO scoring time: pycocotools vs faster-coco-eval (issue 21, "Measured"), in one process.

    PYTHONPATH=$PWD:$PWD/tests python tests/benchmarks/bench_scoring.py [--images 1000] [--per-image 50 300]

A COCO-shaped set (COCO image sizes, 5-30 polygon objects per image, 80 classes) with ~50 and
~300 detections per image (tests/_scoring_data.py: jittered copies of the objects, partly
misclassified, plus scattered boxes and blobs; RLE masks as evaluation post-processing makes them).
For each, ``COCOEvaluator.evaluate()`` (box + mask: loadRes, evaluate, accumulate, summarize, the
per-class figures) under each scorer: process CPU seconds per 1,000 images, the ratio, and the
largest AP difference between the two (box and mask, the six summary figures). Prints the load
average with the figures.
"""

from __future__ import annotations

import argparse
import os
import time

from _scoring_data import coco_gt, detections

from cocoseg.metrics import COCOEvaluator

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def score(gt: dict, dets: dict, scorer: str) -> tuple[float, dict]:
    evaluator = COCOEvaluator(gt, scorer=scorer)
    evaluator.process(list(dets), list(dets.values()))
    start = time.process_time()
    result = evaluator.evaluate()
    return time.process_time() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--per-image", type=int, nargs="+", default=[50, 300])
    args = ap.parse_args()
    gt = coco_gt(args.images, classes=80, objects=(5, 30), seed=0)
    print(f"{args.images} images, {len(gt['annotations'])} objects; load average {os.getloadavg()[0]:.1f} "
          f"at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| detections/image | pycocotools CPU s / 1k img | faster-coco-eval CPU s / 1k img | speed-up | max |AP diff| |")
    print("|---|---|---|---|---|")
    for per_image in args.per_image:
        dets = detections(gt, per_image, seed=per_image)
        slow, a = score(gt, dets, "pycocotools")
        fast, b = score(gt, dets, "faster-coco-eval")
        diff = max(abs(a[t][k] - b[t][k]) for t in ("bbox", "segm") for k in STATS)
        k = 1000 / args.images
        print(f"| {per_image} | {slow * k:.1f} | {fast * k:.1f} | {slow / fast:.2f}x | {diff:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
