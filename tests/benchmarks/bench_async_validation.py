"""Train workers' time blocked per epoch by validation and checkpoint upload, before and after
(issue 21, "Measured"): the same short run twice in one process, on one local Ray:

- before: ``validation.mode=blocking scaling.async_upload=false`` (rank 0 validates in-process and
  uploads in the step; every rank waits at the report barrier);
- after: ``validation.mode=async scaling.async_upload=true`` (a Ray task per epoch validates the
  staged weights; the upload runs in Ray's upload thread).

    PYTHONPATH=$PWD:$PWD/tests python tests/benchmarks/bench_async_validation.py [--epochs 4] [--images 96]

2 CPU workers, validation every epoch. Rank 0 writes, per epoch, its training seconds and the
seconds it spent outside training until the next epoch started (``tracking/epoch_timing.jsonl``:
in-process validation, checkpoint save, report barrier, synchronous upload). The share is
blocked / (train + blocked), the mean over every epoch but the last (the last one's end is the
run's end, which waits for the last validation by design; it is printed apart). Prints the load
average with the figures: on a loaded 2-core host the asynchronous validation competes with
training for the cores, which shows in train seconds, not in blocked seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

MODES = {"before (blocking)": ["validation.mode=blocking", "scaling.async_upload=false"],
         "after (async)": ["validation.mode=async", "scaling.async_upload=true"]}


def run_once(root: Path, snapshot: str, name: str, overrides: list[str], epochs: int, imgsz: int) -> list[dict]:
    from _train_support import TINY

    from cocoseg.config import load_config
    from pipelines import train

    cfg = load_config(None, [*TINY, f"storage.root={root}", f"train.snapshot={snapshot}", "scaling.num_workers=2",
                             f"train.epochs={epochs}", "train.close_mosaic=0", "train.val_every=1",
                             f"model.imgsz={imgsz}", "tracking.system_metrics=false", "tracking.offline_ok=true",
                             f"tracking.run_name={name}", *overrides])
    train.run(cfg)
    lines = (root / "runs" / name / "tracking" / "epoch_timing.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def share(rows: list[dict]) -> float:
    return sum(r["blocked_s"] for r in rows) / max(sum(r["train_s"] + r["blocked_s"] for r in rows), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshot", default="", help="a snapshot URI (default: a synthetic one is made)")
    ap.add_argument("--images", type=int, default=96, help="synthetic snapshot: images (a quarter val)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--imgsz", type=int, default=64)
    args = ap.parse_args()
    from _train_support import make_snapshot

    from cocoseg.cluster import start_ray

    start_ray(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="bench-async-val-"))
    snapshot = args.snapshot or make_snapshot(root, images=args.images, size=(160, 128))
    print(f"2 CPU workers, {args.epochs} epochs, validation every epoch, {args.imgsz} px; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| mode | train s/epoch | blocked s/epoch | blocked share (epochs 1..n-1) | last epoch's end s | load avg |")
    print("|---|---|---|---|---|---|")
    for name, overrides in MODES.items():
        rows = run_once(root, snapshot, name.split()[0], overrides, args.epochs, args.imgsz)
        body, last = rows[:-1], rows[-1]
        print(f"| {name} | {sum(r['train_s'] for r in body) / len(body):.2f} | "
              f"{sum(r['blocked_s'] for r in body) / len(body):.2f} | {100 * share(body):.1f} % | "
              f"{last['blocked_s']:.2f} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
