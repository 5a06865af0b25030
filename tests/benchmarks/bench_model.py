"""Benchmark: eval latency, train-step time and the loss + assigner share of the step (CPU).

    PYTHONPATH=$PWD python tests/benchmarks/bench_model.py [--variant n] [--imgsz 640] [--batch 8]
                                                         [--steps 5] [--threads 2] [--json OUT]

Measured in one run, medians over ``--steps`` repetitions after one warm-up:

- eval forward, batch 1 (``model.eval()``, no grad, unfused);
- train step, batch ``--batch``: forward + real :class:`SegmentationLoss` + backward + SGD step,
  on a synthetic batch of 6 instances per image; inside it the time of the loss forward and of
  the assigner alone;
- the same step with a dummy scalar loss (sum of the outputs), so ``(real - dummy) / real`` is the
  cost of the loss including its backward.

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


def bench_train(model, criterion, targets, images, steps: int, dummy: bool) -> dict[str, list[float]]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    rec: dict[str, list[float]] = {"step": [], "loss": []}
    for i in range(steps + 1):
        start = time.perf_counter()
        outputs = model(images)
        t_loss = time.perf_counter()
        if dummy:
            loss = sum(f.sum() for f in outputs.feats) + outputs.mask_coeffs.sum() + outputs.proto.sum()
        else:
            loss = criterion(outputs, targets)["loss"]
        t_loss = time.perf_counter() - t_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            rec["step"].append(time.perf_counter() - start)
            rec["loss"].append(t_loss)
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
    real = bench_train(model, criterion, targets, images, args.steps, dummy=False)
    assigner_s = timed.seconds[1:]
    dummy = bench_train(model, criterion, targets, images, args.steps, dummy=True)
    med = statistics.median
    step_s, loss_s, dummy_s = med(real["step"]), med(real["loss"]), med(dummy["step"])
    figures = {
        "variant": args.variant, "imgsz": args.imgsz, "batch": args.batch, "threads": args.threads,
        "instances_per_image": args.instances, "steps": args.steps,
        "eval_forward_b1_ms": round(1000 * med(eval_s), 1),
        "train_step_s": round(step_s, 3),
        "train_step_dummy_loss_s": round(dummy_s, 3),
        "loss_forward_s": round(loss_s, 4),
        "assigner_s": round(med(assigner_s), 4),
        "loss_share_forward_pct": round(100 * loss_s / step_s, 1),
        "loss_share_with_backward_pct": round(100 * max(step_s - dummy_s, 0.0) / step_s, 1),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    figures["target_met"] = max(figures["loss_share_forward_pct"], figures["loss_share_with_backward_pct"]) <= 25.0
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
