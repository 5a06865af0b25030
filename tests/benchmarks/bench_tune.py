"""Per-trial overhead of a search (pipelines.tune) against a plain train job, on one local Ray.

    .venv/bin/python tests/benchmarks/bench_tune.py [--trials 3] [--imgsz 64] [--images 48]

Both sides train the same tiny config (synthetic shapes, 1 worker, 1 epoch, SQLite MLflow) on the
same private local Ray (4 logical CPUs), the train job first, then a search of ``--trials`` trials
one at a time (no contention between trials). "First training step" is the moment the run's
first worker is ready for its first batch: the earliest ``workers/attempt-*.json`` record of the
run folder (model built, checkpoint resume checked, input actors up). Printed as JSON:

- ``train.start_to_first_step_s``: ``pipelines.train.run`` called -> first step;
- ``tune.trial_start_to_first_step_s``: each trial, Tune's ``on_trial_start`` -> its first step
  (what a trial costs on top of its training), and their median;
- ``tune.search_start_to_first_step_s``: ``pipelines.tune.run`` called -> the first trial's first
  step (Tune's own set-up and the search's checks included);
- ``overhead_per_trial_s``: median trial figure minus the train job's, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def _first_step(run_dir: str) -> float:
    return min(json.loads(p.read_text())["time"] for p in Path(run_dir, "workers").glob("attempt-*.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--images", type=int, default=48)
    args = parser.parse_args(argv)

    from _train_support import TINY, make_snapshot

    from cocoseg.cluster import start_ray
    from cocoseg.config import load_config
    from pipelines import train, tune

    out: dict = {"trials": args.trials, "imgsz": args.imgsz, "images": args.images}
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        start_ray(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            snapshot = make_snapshot(Path(tmp), images=args.images)
            common = [*TINY, f"model.imgsz={args.imgsz}", f"storage.root={tmp}", f"train.snapshot={snapshot}",
                      "train.epochs=1", "train.close_mosaic=0", "train.optimizer=SGD", "train.preview_images=0",
                      "tracking.system_metrics=false", f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db"]
            started = time.time()
            plain = train.run(load_config(None, [*common, "tracking.run_name=plain"]))
            out["train"] = {"start_to_first_step_s": round(_first_step(plain.run_dir) - started, 2),
                            "wall_s": round(time.time() - started, 1)}
            started = time.time()
            result = tune.run(load_config(None, [*common, f"tune.num_trials={args.trials}", "tune.max_concurrent_trials=1",
                                                 "tune.name=bench", "tune.space={train.lr0: {loguniform: [0.001, 0.01]}}"]))
            per_trial = [round(r["first_step_at"] - r["started_at"], 2) for r in result.rows
                         if r["first_step_at"] and r["started_at"]]
            first = min(r["first_step_at"] for r in result.rows if r["first_step_at"])
            out["tune"] = {"trial_start_to_first_step_s": per_trial,
                           "median_trial_start_to_first_step_s": statistics.median(per_trial),
                           "search_start_to_first_step_s": round(first - started, 2),
                           "wall_s": round(time.time() - started, 1)}
            out["overhead_per_trial_s"] = round(statistics.median(per_trial) - out["train"]["start_to_first_step_s"], 2)
        finally:
            import ray

            ray.shutdown()
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
