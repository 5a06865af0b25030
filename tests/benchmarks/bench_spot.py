"""The cost of the preemption poll (issue 25): ``ray.train.get_preemption_info()`` as a share of a
training step. A plain script: ``python tests/benchmarks/bench_spot.py [--imgsz 160] [--batch 4]
[--steps 30] [--workers 2]``.

A ``TorchTrainer`` of ``--workers`` CPU workers (gloo DDP) on a private local Ray trains the
project's ``train_step`` (yolov8n-seg, real loss, optimiser, EMA) on one augmented batch, and after
every step each rank calls ``ray.train.get_preemption_info()`` (the barrier the worker calls every
``scaling.preemption_poll_steps`` optimiser steps). Both are timed in the same run, interleaved, with
wall clocks (the poll blocks the step; its time includes waiting for the slower rank, which the
next step's all-reduce would wait for anyway, so the figure is an upper bound). Prints the median
step, the median poll, the share per step for a poll every step and at the default cadence, the
step time at which the default cadence costs 1 %, and the load average.
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


def _loop(config: dict) -> None:
    """The worker (pickled by value: defined in ``__main__``)."""
    import ray.train
    import ray.train.torch
    import torch

    from cocoseg.config import load_config
    from cocoseg.engine import build
    from cocoseg.engine.loop import LoopState, train_step

    cfg = load_config(None, config["overrides"])
    ctx = ray.train.get_context()
    torch.set_num_threads(1)
    model = build.build_model(cfg.model).to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    parts = build.build_train_parts(cfg, model=model, device=torch.device("cpu"), world_size=ctx.get_world_size(),
                                    batches_per_epoch=1000)
    batch = build.build_train_collate(cfg)(config["rows"])
    state = LoopState()
    steps, polls = [], []
    for i in range(config["warmup"] + config["steps"]):
        t0 = time.perf_counter()
        train_step(parts, batch, state)
        t1 = time.perf_counter()
        info = ray.train.get_preemption_info()
        t2 = time.perf_counter()
        assert info is None
        if i >= config["warmup"]:
            steps.append(t1 - t0)
            polls.append(t2 - t1)
    if ctx.get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps({"steps": steps, "polls": polls}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np
    import ray
    from augment_rows import make_rows
    from ray.train.torch import TorchTrainer

    from cocoseg.config import ScalingConfig
    from cocoseg.data.stage import AugmentBatch

    rows = AugmentBatch(preset="yolov8", imgsz=args.imgsz, num_classes=4)(make_rows(args.batch, (args.imgsz, args.imgsz)))
    overrides = ["model.variant=n", "model.num_classes=4", f"model.imgsz={args.imgsz}",
                 f"train.batch_size={args.batch}", f"train.nominal_batch={args.batch * args.workers}"]
    with tempfile.TemporaryDirectory(prefix="bench-spot-") as tmp:
        out = Path(tmp) / "times.json"
        ray.init(address="local", num_cpus=max(4, args.workers * 2), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
        try:
            TorchTrainer(_loop, train_loop_config={"overrides": overrides, "rows": {k: np.asarray(v) for k, v in rows.items()},
                                                   "steps": args.steps, "warmup": args.warmup, "out": str(out)},
                         scaling_config=ray.train.ScalingConfig(num_workers=args.workers, use_gpu=False,
                                                                resources_per_worker={"CPU": 1}),
                         run_config=ray.train.RunConfig(name="bench-spot", storage_path=tmp)).fit()
        finally:
            ray.shutdown()
        times = json.loads(out.read_text())
    step, poll = statistics.median(times["steps"]), statistics.median(times["polls"])
    every = ScalingConfig().preemption_poll_steps
    load = os.getloadavg()
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}; {args.workers} CPU workers, yolov8n-seg {args.imgsz} px, batch {args.batch}, "
          f"{args.steps} steps")
    print(f"median step {step * 1e3:.1f} ms; median poll {poll * 1e3:.2f} ms (p90 "
          f"{sorted(times['polls'])[int(0.9 * len(times['polls']))] * 1e3:.2f} ms)")
    print(f"poll share of a step: every step {poll / step:.2%}; every {every} optimiser steps (the default) "
          f"{poll / (every * step):.3%} (target <= 1 %)")
    print(f"the default cadence costs 1 % for steps of {poll / (0.01 * every) * 1e3:.1f} ms or longer; "
          f"for shorter steps raise scaling.preemption_poll_steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
