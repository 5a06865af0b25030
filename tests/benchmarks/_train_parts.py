"""Parts (b) and (c) of ``bench_train.py`` (issue 4, item 9); also runnable alone:

    python tests/benchmarks/_train_parts.py --part b [--imgsz 160] [--images 96] [--epochs 2]
    python tests/benchmarks/_train_parts.py --part c          # needs a CUDA GPU; says so otherwise

(b) Training images/s through the whole path (Ray Data input -> TorchTrainer DDP on CPU, gloo)
    with 1 and 2 workers, on a synthetic snapshot, in the same run. The figure is the last
    epoch's ``train/images_per_s`` (all workers together, input wait included), next to the
    run's wall time.
(c) GPU: training-step images/s of the n and s variants at 640, batch 16 and 32, bf16 autocast,
    channels_last, real loss, and the GPU utilisation sampled by NVML while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def part_b(args) -> dict:
    import ray
    from _train_support import make_snapshot

    from cocoseg.config import load_config
    from pipelines import train

    imgsz = getattr(args, "train_imgsz", 160)
    out: dict = {"imgsz": imgsz, "images": args.images, "epochs": args.epochs, "batch": 8}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
        try:
            snapshot = make_snapshot(Path(tmp), images=args.images, val_fraction=0.125, size=(imgsz, imgsz))
            for workers in (1, 2):
                cfg = load_config(None, [
                    "model.variant=n", "model.num_classes=4", f"model.imgsz={imgsz}", "train.batch_size=8",
                    f"train.epochs={args.epochs}", "train.close_mosaic=0", f"scaling.num_workers={workers}",
                    "scaling.cpus_per_worker=1", "data.actors=1", "data.cpus_per_actor=1",
                    "scaling.threads_per_worker=1" if workers == 2 else "scaling.threads_per_worker=2",
                    f"storage.root={tmp}", f"train.snapshot={snapshot}", f"tracking.run_name=bench-{workers}",
                    "tracking.system_metrics=false", "scaling.max_failures=0"])
                started = time.perf_counter()
                result = train.run(cfg)
                out[f"workers_{workers}"] = {"images_per_s": round(result.metrics["train/images_per_s"], 2),
                                             "epoch_time_s": round(result.metrics["train/epoch_time_s"], 1),
                                             "wall_s": round(time.perf_counter() - started, 1)}
        finally:
            ray.shutdown()
    out["speedup_2_vs_1"] = round(out["workers_2"]["images_per_s"] / out["workers_1"]["images_per_s"], 2)
    out["load_average"] = os.getloadavg()
    print(json.dumps({"part_b": out}, indent=2))
    return out


def _gpu_util_sampler(stop: threading.Event, samples: list[float]) -> None:
    """GPU utilisation (%) every 0.1 s: NVML when pynvml is installed, else ``nvidia-smi``."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)

        def read() -> float:
            return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except ImportError:
        import subprocess

        def read() -> float:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=5, check=True)
            return float(out.stdout.strip().splitlines()[0])
    while not stop.is_set():
        samples.append(read())
        time.sleep(0.1)


def part_c(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        print("part (c) skipped: no CUDA GPU on this machine (torch.cuda.is_available() is False)")
        return {"skipped": "no CUDA GPU"}
    from cocoseg.engine.ema import ModelEMA
    from cocoseg.engine.loop import LoopState, TrainParts, train_epoch
    from cocoseg.engine.optim import Schedule, build_optimizer
    from cocoseg.loss import SegmentationLoss
    from cocoseg.model import build_model
    from cocoseg.structures import SegTargets, TrainBatch

    device = torch.device("cuda")
    results = {}
    for variant in ("n", "s"):
        for batch in (16, 32):
            model = build_model(variant, 80).to(device).to(memory_format=torch.channels_last)
            images = torch.randint(0, 255, (batch, 3, 640, 640), dtype=torch.uint8)
            n = 6 * batch  # six instances per image, boxes spread over the frame
            g = torch.Generator().manual_seed(0)
            centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2
            masks = torch.zeros(batch, 160, 160, dtype=torch.int32)
            for i in range(n):
                b, k = i // 6, i % 6
                cx, cy = (centres[i] * 160).long().tolist()
                masks[b, max(cy - 10, 0):cy + 10, max(cx - 10, 0):cx + 10] = k + 1
            targets = SegTargets(batch_idx=torch.arange(batch).repeat_interleave(6), cls=torch.randint(0, 80, (n,), generator=g),
                                 boxes_cxcywh_norm=torch.cat([centres, torch.full((n, 2), 20 / 160)], 1), masks=masks)
            data = TrainBatch(images, targets).to(device)
            schedule = Schedule(epochs=1, batches_per_epoch=args.steps, global_batch=batch, warmup_epochs=0)
            parts = TrainParts(model=model, loss_fn=SegmentationLoss.from_model(model),
                               optimizer=build_optimizer(model), schedule=schedule, ema=ModelEMA(model),
                               device=device, amp_dtype=torch.bfloat16)
            train_epoch(parts, [data] * 3, LoopState())  # warm-up: cudnn autotune, allocator
            torch.cuda.synchronize()
            stop, samples = threading.Event(), []
            sampler = threading.Thread(target=_gpu_util_sampler, args=(stop, samples), daemon=True)
            sampler.start()
            started = time.perf_counter()
            train_epoch(parts, [data] * args.steps, LoopState())
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            stop.set()
            sampler.join()
            results[f"{variant}_b{batch}"] = {"images_per_s": round(batch * args.steps / seconds, 1),
                                              "gpu_util_pct_mean": round(sum(samples) / len(samples), 1) if samples else None,
                                              "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
            del parts, model, data
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    results["device"] = torch.cuda.get_device_name(0)
    print(json.dumps({"part_c": results}, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="b,c")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--train-imgsz", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="GPU timed steps per configuration")
    args = parser.parse_args(argv)
    for part in args.part.split(","):
        {"b": part_b, "c": part_c}[part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
