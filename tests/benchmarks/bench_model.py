"""Benchmark: the CPU train step, split into parts, side by side with the reference's (issue 9.3).

    PYTHONPATH=$PWD python tests/benchmarks/bench_model.py [--variant n] [--imgsz 640] [--batch 8]
        [--threads 1,2] [--pairs 7] [--instances 6] [--json OUT]
    COCOSEG_REF_PYTHON=/work/.venv-ref/bin/python PYTHONPATH=$PWD python tests/benchmarks/bench_model.py

One train step = network forward + loss forward + backward + SGD step (lr 0.01, momentum 0.9,
nesterov; the same plain optimiser on both sides) on one synthetic batch of ``--instances``
rectangular instances per image (overlap-map masks at imgsz / 4). cocoseg's step is split into
network forward, loss forward (the assigner inside it also timed alone), loss backward
(``autograd.grad`` down to the raw outputs), network backward and optimiser step.

When ``COCOSEG_REF_PYTHON`` names a Python with ``ultralytics``, the reference's n-seg model
(built from ``yolov8n-seg.yaml``, untrained, ``YOLO_OFFLINE=1``) runs the same step on the same
images and targets through its own criterion, in a separate process; nothing of it is imported
here. Both sides are worker processes with the same thread count, driven one step at a time in
ABBA order (never overlapping) for ``--pairs`` pairs after one warm-up step each; the figure is
the median over pairs of reference time / cocoseg time (> 1 = cocoseg faster). Peak RSS is each
worker's ``ru_maxrss``; "step RSS" is that peak minus the RSS just before the first step.

Targets (issue 9.3): loss + assigner <= 15 % of cocoseg's step, step ratio >= 1.2 at 1 and 2
threads, cocoseg's peak RSS <= the reference's. The CPU is shared: the load average is printed
at the start and end of each thread count, and only paired ratios are meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cocoseg.config import TrainConfig  # noqa: E402
from cocoseg.engine.allocator import retain_freed_memory  # noqa: E402
from cocoseg.loss import SegmentationLoss  # noqa: E402
from cocoseg.model import build_model  # noqa: E402
from cocoseg.structures import SegTargets  # noqa: E402

TAG = "@@bench "  # protocol lines; anything else a worker prints is ignored


def synthetic_targets(batch: int, imgsz: int, per_image: int, num_classes: int, seed: int = 0,
                      mask_ratio: int = 4) -> SegTargets:
    """``per_image`` non-degenerate boxes per image with rectangular masks painted in row order,
    as overlap maps at 1/``mask_ratio`` of the input."""
    gen = torch.Generator().manual_seed(seed)
    n = batch * per_image
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
    size = 0.05 + 0.3 * torch.rand(n, 2, generator=gen)
    boxes = torch.cat((centre, size), 1)
    batch_idx = torch.arange(batch).repeat_interleave(per_image)
    masks = torch.zeros(batch, imgsz // mask_ratio, imgsz // mask_ratio, dtype=torch.uint8)
    grid = imgsz // mask_ratio
    for i in range(n):  # building the fixture, not the measured path
        b, k = int(batch_idx[i]), i % per_image + 1
        x1, y1 = ((centre[i] - size[i] / 2) * grid).long().clamp(0, grid).tolist()
        x2, y2 = ((centre[i] + size[i] / 2) * grid).long().clamp(0, grid).tolist()
        masks[b, y1:y2, x1:x2] = k
    return SegTargets(batch_idx=batch_idx, cls=torch.randint(0, num_classes, (n,), generator=gen),
                      boxes_cxcywh_norm=boxes, masks=masks)


def write_batch(path: Path, batch: int, imgsz: int, per_image: int) -> None:
    """The shared synthetic batch as .npz (both sides read the same arrays). Each side gets the
    masks its defaults train on: cocoseg maps at its default ``train.mask_ratio``, the reference
    1/4-size maps (its ``mask_ratio`` 4); the same boxes and instances."""
    ratio = TrainConfig().mask_ratio
    quarter = synthetic_targets(batch, imgsz, per_image, 80, mask_ratio=4)
    t = quarter if ratio == 4 else synthetic_targets(batch, imgsz, per_image, 80, mask_ratio=ratio)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    np.savez(path, images=images.numpy(), batch_idx=t.batch_idx.numpy(), cls=t.cls.numpy(),
             boxes=t.boxes_cxcywh_norm.numpy(), masks=t.masks.numpy(), masks_quarter=quarter.masks.numpy())


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class TimedAssigner:
    """Wraps the loss's assigner and records the seconds of its last call."""

    def __init__(self, inner) -> None:
        self.inner, self.last = inner, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.last = time.perf_counter() - start
        return out


def cocoseg_worker(batch_file: str, variant: str, threads: int) -> None:
    """Serve ``step`` / ``quit`` lines on stdin: one timed train step each, figures as JSON."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    retain_freed_memory()  # as the training worker does on a CPU
    data = np.load(batch_file)
    images = torch.from_numpy(data["images"])
    targets = SegTargets(batch_idx=torch.from_numpy(data["batch_idx"]), cls=torch.from_numpy(data["cls"]),
                         boxes_cxcywh_norm=torch.from_numpy(data["boxes"]), masks=torch.from_numpy(data["masks"]))
    # as the training worker and train_step do: model and images in channels_last
    model = build_model(variant, 80).to(memory_format=torch.channels_last).train()
    images = images.contiguous(memory_format=torch.channels_last)
    criterion = SegmentationLoss.from_model(model)
    timed = criterion.assigner = TimedAssigner(criterion.assigner)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
    rss_before = _rss_mib()
    print(TAG + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        c0, t0 = time.process_time(), time.perf_counter()
        outputs = model(images)
        leaves = [*outputs.feats, outputs.mask_coeffs, outputs.proto]
        t1 = time.perf_counter()
        loss = criterion(outputs, targets)["loss"]
        t2 = time.perf_counter()
        grads = torch.autograd.grad(loss, leaves)  # back-propagate through the loss only
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(leaves, grads)  # then through the network
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        print(TAG + json.dumps({"step": t5 - t0, "cpu": time.process_time() - c0, "net_fwd": t1 - t0, "loss_fwd": t2 - t1, "assigner": timed.last,
                                "loss_bwd": t3 - t2, "net_bwd": t4 - t3, "optim": t5 - t4}), flush=True)
    _final(rss_before)


def _final(rss_before: float) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(TAG + json.dumps({"peak_rss_mib": peak, "step_rss_mib": peak - rss_before}), flush=True)


# Run by COCOSEG_REF_PYTHON in its own process; it only drives the reference's public API.
REFERENCE_WORKER = r'''
import json, os, resource, sys, time
os.environ.setdefault("YOLO_OFFLINE", "1")
import numpy as np, torch
batch_file, threads, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
torch.manual_seed(0)
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
d = np.load(batch_file)
batch = {"img": torch.from_numpy(d["images"]), "batch_idx": torch.from_numpy(d["batch_idx"]).float(),
         "cls": torch.from_numpy(d["cls"]).float().view(-1, 1), "bboxes": torch.from_numpy(d["boxes"]),
         "masks": torch.from_numpy(d["masks_quarter"]).float()}
model = YOLO("yolov8n-seg.yaml").model
model.args = get_cfg()
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
rss_before = rss()
print(tag + json.dumps({"ready": True, "version": __import__("ultralytics").__version__}), flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    c0, t0 = time.process_time(), time.perf_counter()
    preds = model(batch["img"])
    t1 = time.perf_counter()
    loss, _ = model.loss(batch, preds)
    t2 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    t3 = time.perf_counter()
    opt.step()
    t4 = time.perf_counter()
    print(tag + json.dumps({"step": t4 - t0, "cpu": time.process_time() - c0, "net_fwd": t1 - t0, "loss_fwd": t2 - t1, "backward": t3 - t2,
                            "optim": t4 - t3}), flush=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(tag + json.dumps({"peak_rss_mib": peak, "step_rss_mib": peak - rss_before}), flush=True)
'''


class Worker:
    """One benchmark worker process, driven a step at a time over stdin/stdout."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     stderr=subprocess.DEVNULL)
        self.info = self._read()
        self.steps: list[dict] = []

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        raise RuntimeError(f"{self.name} worker exited (rc {self.proc.wait()}) before answering; "
                           "run it alone to see its error")

    def step(self, keep: bool = True) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        rec = self._read()
        if keep:
            self.steps.append(rec)
        return rec

    def close(self) -> dict:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        final = self._read()
        self.proc.wait(timeout=60)
        return final


def _workers(batch_file: Path, variant: str, threads: int) -> list[Worker]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    workers = [Worker("cocoseg", [sys.executable, __file__, "--worker", str(batch_file), "--variant", variant,
                                  "--threads", str(threads)], env)]
    ref = os.environ.get("COCOSEG_REF_PYTHON")
    if ref:
        ref_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        workers.append(Worker("reference", [ref, "-c", REFERENCE_WORKER, str(batch_file), str(threads), TAG],
                              {**ref_env, "YOLO_OFFLINE": "1"}))
    return workers


def measure(batch_file: Path, variant: str, threads: int, pairs: int) -> dict:
    """Alternating paired steps at one thread count -> medians, ratio, peak RSS, load average."""
    load_start = os.getloadavg()
    workers = _workers(batch_file, variant, threads)
    try:
        for w in workers:
            w.step(keep=False)  # warm-up
        for i in range(pairs):
            for w in (workers if i % 2 == 0 else workers[::-1]):  # ABBA: drift hits both sides alike
                w.step()
    finally:
        finals = [w.close() for w in workers]
    med = statistics.median
    coco = workers[0].steps
    parts = {k: round(med(s[k] for s in coco), 3) for k in coco[0]}
    share = med((s["loss_fwd"] + s["loss_bwd"]) / s["step"] for s in coco)
    out = {"threads": threads, "pairs": pairs, "cocoseg": {**parts, **_rss(finals[0])},
           "loss_share_pct": round(100 * share, 1)}
    if len(workers) > 1:
        ref = workers[1].steps
        out["reference"] = {**{k: round(med(s[k] for s in ref), 3) for k in ref[0]}, **_rss(finals[1]),
                            "version": workers[1].info.get("version")}
        ratios = [r["step"] / c["step"] for r, c in zip(ref, coco, strict=True)]
        out["step_ratio_ref_over_cocoseg"] = round(med(ratios), 3)
        out["step_ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
        # CPU seconds per step: less sensitive than wall time to other jobs on a shared host.
        out["cpu_ratio_ref_over_cocoseg"] = round(med(r["cpu"] / c["cpu"] for r, c in zip(ref, coco, strict=True)), 3)
    out["load_avg_1min"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    return out


def _rss(final: dict) -> dict:
    return {"peak_rss_mib": round(final["peak_rss_mib"]), "step_rss_mib": round(final["step_rss_mib"])}


def _table(rows: list[dict]) -> str:
    head = ("| threads | side | step s | CPU s | net fwd | loss fwd | assigner | loss bwd | net bwd | optim | "
            "loss share | peak RSS MiB | step RSS MiB | ratio ref/cocoseg (wall; CPU) | load avg |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r["cocoseg"]
        lines.append(f"| {r['threads']} | cocoseg | {c['step']} | {c['cpu']} | {c['net_fwd']} | {c['loss_fwd']} | {c['assigner']} | "
                     f"{c['loss_bwd']} | {c['net_bwd']} | {c['optim']} | {r['loss_share_pct']} % | "
                     f"{c['peak_rss_mib']} | {c['step_rss_mib']} | {r.get('step_ratio_ref_over_cocoseg', '-')}; {r.get('cpu_ratio_ref_over_cocoseg', '-')} | "
                     f"{r['load_avg_1min'][0]} -> {r['load_avg_1min'][1]} |")
        if "reference" in r:
            f = r["reference"]
            lines.append(f"| {r['threads']} | reference | {f['step']} | {f['cpu']} | {f['net_fwd']} | {f['loss_fwd']} | - | "
                         f"(in bwd) | {f['backward']} (all) | {f['optim']} | - | {f['peak_rss_mib']} | "
                         f"{f['step_rss_mib']} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="n")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--pairs", type=int, default=7, help="timed steps per side and thread count")
    parser.add_argument("--instances", type=int, default=6, help="instances per image")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: serve steps
    args = parser.parse_args(argv)
    if args.worker:
        cocoseg_worker(args.worker, args.variant, int(args.threads))
        return {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        batch_file = Path(tmp) / "batch.npz"
        write_batch(batch_file, args.batch, args.imgsz, args.instances)
        for threads in (int(t) for t in args.threads.split(",")):
            rows.append(measure(batch_file, args.variant, threads, args.pairs))
            print(json.dumps(rows[-1]), flush=True)  # each thread count as soon as it is measured
    figures = {"variant": args.variant, "imgsz": args.imgsz, "batch": args.batch,
               "instances_per_image": args.instances, "rows": rows}
    print(json.dumps(figures, indent=1))
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
