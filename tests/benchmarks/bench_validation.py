"""Validation time vs training time per epoch (issue 9 item 3): 60 val images at 256 px.

    PYTHONPATH=$PWD python tests/benchmarks/bench_validation.py --snapshot SNAP [--old-tree DIR] [--rounds 2]

SNAP: a snapshot with >= 60 val and >= 16 train images at 256 px (e.g. ``cocoseg synth`` 120
images --size 256x256 then ``cocoseg ingest``). The model is the n variant with its class biases
raised so that, as mid-training, nearly every anchor passes conf 0.001 and each image keeps 300
detections (the worst case for NMS, masks and COCOeval). Training time per epoch is estimated
from timed train steps (batch 16, 240 images = 15 steps, as in the issue's measurement), in the
same process and run. ``--old-tree`` times the validator of another checkout (e.g. the commit
before this change) in a subprocess, alternating with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

ONE = r'''
import json, sys, time, torch
torch.set_num_threads(1)
from cocoseg.config import load_config
from cocoseg.data.schema import read_manifest, snapshot_to_coco
from cocoseg.engine import build
snap = sys.argv[1]
cfg = load_config(None, ["model.variant=n", "model.num_classes=4", "model.imgsz=256", "train.batch_size=16",
                         "data.max_val_images=60"])
man = read_manifest(snap)
torch.manual_seed(0)
model = build.build_model(cfg.model)
with torch.no_grad():
    for c in model.head.cv3:
        c[-1].bias.fill_(-3.0)
vb = build.build_val_batches(cfg, snap)
list(vb())
v = build.build_validator(cfg, vb, device=torch.device("cpu"), coco_gt=snapshot_to_coco(snap, "val"),
                          category_ids=list(man.category_ids), class_names=list(man.class_names))
t = time.perf_counter(); m, _ = v(model, 0); s = time.perf_counter() - t
print(json.dumps({"val_s": s, "mask_ap50_95": m["val/mask_ap50_95"], "box_ap50_95": m["val/box_ap50_95"]}))
'''


def validate_once(tree: str, snapshot: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", ONE, snapshot], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_step_seconds(snapshot: str, steps: int) -> float:
    from cocoseg.config import load_config
    from cocoseg.data.augment import preset_for_epoch  # noqa: F401  (preset names)
    from cocoseg.data.collate import collate_train
    from cocoseg.data.schema import read_split_table
    from cocoseg.data.stage import INPUT_COLUMNS, AugmentBatch
    from cocoseg.engine import build
    from cocoseg.engine.loop import LoopState, train_step

    torch.set_num_threads(1)
    cfg = load_config(None, ["model.variant=n", "model.num_classes=4", "model.imgsz=256", "train.batch_size=16"])
    table = read_split_table(snapshot, "train", columns=list(INPUT_COLUMNS)).slice(0, 16)
    batch = collate_train(AugmentBatch(preset="yolov8", imgsz=256, seed=0, epoch=0, num_classes=4)(table))
    model = build.build_model(cfg.model).train()
    parts = build.build_train_parts(cfg, model=model, device=torch.device("cpu"), world_size=1, batches_per_epoch=15)
    state = LoopState()
    train_step(parts, batch, state)  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        train_step(parts, batch, state)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--old-tree", default="")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    for r in range(args.rounds):
        new = validate_once(here, args.snapshot)
        old = validate_once(args.old_tree, args.snapshot) if args.old_tree else None
        step = train_step_seconds(args.snapshot, args.steps)
        epoch = 15 * step
        rows.append({"round": r, "val_new_s": round(new["val_s"], 2), "val_old_s": old and round(old["val_s"], 2),
                     "train_step_s": round(step, 3), "train_epoch_s (15 steps)": round(epoch, 2),
                     "val/train new": round(new["val_s"] / epoch, 3),
                     "val/train old": old and round(old["val_s"] / epoch, 3),
                     "speed-up": old and round(old["val_s"] / new["val_s"], 2),
                     "mask_ap new/old": (new["mask_ap50_95"], old and old["mask_ap50_95"])})
        print(json.dumps(rows[-1]))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
