"""Benchmark: eval latency, train-step time and the loss + assigner share of the step (CPU).

    PYTHONPATH=$PWD python tests/benchmarks/bench_model.py [--variant n] [--imgsz 640] [--batch 8]
                                                         [--steps 5] [--threads 2] [--json OUT]

Measured in one run, medians over ``--steps`` repetitions after one warm-up:

- eval forward, batch 1 (``model.eval()``, no grad, unfused);
- train step, batch ``--batch``: forward + real :class:`SegmentationLoss` + backward + SGD step,
  on a synthetic batch of 6 instances per image. Inside each step the loss forward (assigner
  included, which is also timed alone) and the loss backward (``autograd.grad`` down to the raw
  outputs, before the network's backward) are timed, so the share of the step spent in loss +
  assigner comes from the same steps.

Target (issue 3): loss + assigner <= 25 % of the step. The load average is printed with the
figures because the CPU is shared; only compare runs taken at a low load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cocoseg.loss import SegmentationLoss  # noqa: E402
from cocoseg.model import build_model  # noqa: E402
from cocoseg.structures import SegTargets  # noqa: E402


def synthetic_targets(batch: int, imgsz: int, per_image: int, num_classes: int, seed: int = 0) -> SegTargets:
    """``per_image`` non-degenerate boxes per image with rectangular masks painted in row order."""
    gen = torch.Generator().manual_seed(seed)
    n = batch * per_image
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
    size = 0.05 + 0.3 * torch.rand(n, 2, generator=gen)
    boxes = torch.cat((centre, size), 1)
    batch_idx = torch.arange(batch).repeat_interleave(per_image)
    masks = torch.zeros(batch, imgsz // 4, imgsz // 4, dtype=torch.int32)
    grid = imgsz // 4
    for i in range(n):  # building the fixture, not the measured path
        b, k = int(batch_idx[i]), i % per_image + 1
        x1, y1 = ((centre[i] - size[i] / 2) * grid).long().clamp(0, grid).tolist()
        x2, y2 = ((centre[i] + size[i] / 2) * grid).long().clamp(0, grid).tolist()
        masks[b, y1:y2, x1:x2] = k
    return SegTargets(batch_idx=batch_idx, cls=torch.randint(0, num_classes, (n,), generator=gen),
                      boxes_cxcywh_norm=boxes, masks=masks)


class TimedAssigner:
    """Wraps the loss's assigner and records the seconds of each call."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, []

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.inner(*args)
        self.seconds.append(time.perf_counter() - start)
        return out


def bench_eval(model, imgsz: int, steps: int) -> list[float]:
    model.eval()
    x = torch.rand(1, 3, imgsz, imgsz)
    times = []
    with torch.no_grad():
        for i in range(steps + 1):
            start = time.perf_counter()
            model(x)
            if i:  # the first call is the warm-up
                times.append(time.perf_counter() - start)
    return times


def bench_train(model, criterion, targets, images, steps: int) -> dict[str, list[float]]:
    """Train steps split into model forward, loss forward, loss backward (down to the raw
    outputs), model backward and optimiser step, all inside the same step."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    rec: dict[str, list[float]] = {"step": [], "loss_fwd": [], "loss_bwd": []}
    for i in range(steps + 1):
        start = time.perf_counter()
        outputs = model(images)
        leaves = [*outputs.feats, outputs.mask_coeffs, outputs.proto]
        t0 = time.perf_counter()
        loss = criterion(outputs, targets)["loss"]
        t1 = time.perf_counter()
        grads = torch.autograd.grad(loss, leaves)  # back-propagate through the loss only
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(leaves, grads)  # then through the network
        opt.step()
        if i:  # the first step is the warm-up
            rec["step"].append(time.perf_counter() - start)
            rec["loss_fwd"].append(t1 - t0)
            rec["loss_bwd"].append(t2 - t1)
    return rec


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="n")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--instances", type=int, default=6, help="instances per image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.variant, 80)
    criterion = SegmentationLoss.from_model(model)
    timed = TimedAssigner(criterion.assigner)
    criterion.assigner = timed
    targets = synthetic_targets(args.batch, args.imgsz, args.instances, 80)
    images = torch.rand(args.batch, 3, args.imgsz, args.imgsz)
    load_before = os.getloadavg()[0]

    eval_s = bench_eval(model, args.imgsz, args.steps)
    rec = bench_train(model, criterion, targets, images, args.steps)
    assigner_s = timed.seconds[1:]
    med = statistics.median
    shares = [(f + b) / s for f, b, s in zip(rec["loss_fwd"], rec["loss_bwd"], rec["step"], strict=True)]
    figures = {
        "variant": args.variant, "imgsz": args.imgsz, "batch": args.batch, "threads": args.threads,
        "instances_per_image": args.instances, "steps": args.steps,
        "eval_forward_b1_ms": round(1000 * med(eval_s), 1),
        "train_step_s": round(med(rec["step"]), 3),
        "loss_forward_s": round(med(rec["loss_fwd"]), 4),
        "loss_backward_s": round(med(rec["loss_bwd"]), 4),
        "assigner_s": round(med(assigner_s), 4),
        "loss_share_pct": round(100 * med(shares), 1),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    figures["target_met"] = figures["loss_share_pct"] <= 25.0
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
