"""Repeat-factor sampling on a skewed set (issue 24, item 3). A plain script:

    python tests/benchmarks/bench_repeat_factor.py [--images 360] [--keep-rare 0.08] [--threshold 0.5] [--epochs 12]

Writes the project's synthetic shapes (4 classes, random colours: only a shape's geometry tells its
class) and makes ``star`` rare in the train split only: a train image holding a star is kept with
probability ``--keep-rare`` (the others all), so the val split stays balanced and scores the rare
class on many instances. Ingests it and trains the n model twice through the real job path
(``pipelines.train.run`` on a private local Ray, one CPU worker, the demo recipe of
``pipelines/configs/demo.yaml``), the same seed, without and with ``data.repeat_factor_threshold``;
prints per-class mask and box AP50-95 / AP50 of the last epoch (pycocotools), the images and
samples of each class per epoch (the plan's expectation), the wall and process CPU time of each run
and the load average. ``--json PATH`` writes everything measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

RARE = "star"


def skew(source: Path, keep: float, seed: int) -> dict[str, int]:
    """Drop train images holding a star with probability 1 - ``keep``; -> images per class left."""
    path = source / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    rare_id = next(c["id"] for c in doc["categories"] if c["name"] == RARE)
    holders = {a["image_id"] for a in doc["annotations"] if a["category_id"] == rare_id}
    rng = random.Random(seed)
    dropped = {i for i in sorted(holders) if rng.random() >= keep}
    doc["images"] = [im for im in doc["images"] if im["id"] not in dropped]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] not in dropped]
    path.write_text(json.dumps(doc))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    per: dict[str, set] = {n: set() for n in names.values()}
    for a in doc["annotations"]:
        per[names[a["category_id"]]].add(a["image_id"])
    return {"train_images": len(doc["images"]), **{n: len(v) for n, v in per.items()}}


def per_class(run_dir: str) -> dict[str, dict[str, float]]:
    from cocoseg import tracking
    from cocoseg.tracking.ui import per_class_table

    last = max(tracking.read_journal(tracking.journal_uri(run_dir)), key=lambda r: r["step"])
    return per_class_table(last["metrics"])


def train_once(cfg, name: str, threshold: float) -> dict:
    from cocoseg.config import with_values
    from pipelines import train

    cfg = with_values(cfg, {"data.repeat_factor_threshold": threshold, "tracking.run_name": name})
    load0, cpu0, wall0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    result = train.run(cfg)
    return {"threshold": threshold, "wall_s": time.perf_counter() - wall0,
            "driver_cpu_s": time.process_time() - cpu0, "load_start": load0, "load_end": os.getloadavg()[0],
            "per_class": per_class(result.run_dir), "mask_ap50_95": result.metrics.get("val/mask_ap50_95")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=360)
    p.add_argument("--keep-rare", type=float, default=0.08)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    args = p.parse_args()

    from cocoseg.config import load_config, with_values
    from cocoseg.data.class_stats import split_stats
    from cocoseg.data.repeat_factor import class_repeat_factors
    from cocoseg.engine.checks import ensure_ray
    from cocoseg.ingest.synthetic import write_synthetic_coco
    from pipelines import config_path, ingest

    root = Path(tempfile.mkdtemp(prefix="bench-rfs-"))
    write_synthetic_coco(str(root / "src"), images=args.images, size=(128, 96), seed=args.seed, val_fraction=0.3,
                         max_instances=4, colour_by_class=False)
    kept = skew(root / "src", args.keep_rare, args.seed)
    cfg = load_config(config_path("pipelines/configs/demo.yaml"),
                      [f"storage.root={root}", f"ingest.source={root / 'src'}", f"train.epochs={args.epochs}",
                       f"train.close_mosaic={args.epochs}", f"train.seed={args.seed}", "train.preview_images=0",
                       "tracking.system_metrics=false"])
    ensure_ray(cfg.scaling, cfg.data, cfg.validation)
    manifest = ingest.run(cfg).manifest
    cfg = with_values(cfg, {"train.snapshot": manifest.snapshot_uri})
    stats = split_stats(manifest, "train")["classes"]["images"]
    n = manifest.splits["train"].images
    factors = dict(zip(manifest.class_names, class_repeat_factors(stats, n, args.threshold).tolist(), strict=True))
    print(f"train split: {kept}; class repeat factors at t={args.threshold}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in factors.items()), flush=True)
    runs = [train_once(cfg, "plain", 0.0), train_once(cfg, "rfs", args.threshold)]
    print(f"\n{'run':<6} {'class':<9} {'mask AP50-95':>12} {'mask AP50':>9} {'box AP50-95':>11}")
    for r in runs:
        for cls, row in r["per_class"].items():
            print(f"{'rfs' if r['threshold'] else 'plain':<6} {cls:<9} {row['mask_ap50_95']:>12.4f} "
                  f"{row['mask_ap50']:>9.4f} {row['box_ap50_95']:>11.4f}")
        print(f"       wall {r['wall_s']:.0f} s, load average {r['load_start']:.1f} -> {r['load_end']:.1f}")
    a, b = (r["per_class"][RARE]["mask_ap50_95"] for r in runs)
    print(f"\n{RARE} mask AP50-95: {a:.4f} without, {b:.4f} with repeat-factor sampling (t={args.threshold})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "train_split": kept, "factors": factors,
                                               "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
