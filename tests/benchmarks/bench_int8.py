"""INT8 for CPU serving (issue 23, item 4). A plain script:

    python tests/benchmarks/bench_int8.py [--epochs 12] [--train-images 160] [--val-images 48] [--imgsz 160]
        [--latency-imgsz 640] [--exclude head-final] [--workdir DIR] [--json PATH]

Trains the n model on the project's easy synthetic shapes (``cocoseg.ingest.synthetic``, 4 classes)
through the real jobs (ingest -> ``pipelines.train.run`` on a private local Ray, one CPU worker),
exports it with ``export.formats=[onnx,onnx-int8]`` (``--calibration-images`` train images,
seeded) and evaluates the eager model, the fp32 ONNX and the INT8 ONNX in one pass on the val split
(``cocoseg.batch.served.measure_served``, pycocotools): the INT8 graph's mask / box AP50-95 drop
against the fp32 ONNX. Latency: the same weights exported at ``--latency-imgsz`` (the served size),
each graph under ONNX Runtime on the CPU with 1 intra-op thread (a shared host: threads would
measure the neighbours), the graph's forward alone on a fixed input at batch 1 and 8, ``--runs``
timed runs after 2 warm-up runs; the figure is the median of the process CPU time per run
(wall time printed beside it), and the ratio INT8 / fp32 is taken inside one run. Every
``--exclude`` value (node-name substrings or presets ``decode`` / ``head-final``, comma-separated)
adds one more INT8 variant; the first variant quantizes the whole graph.
The load average is printed at the start and the end.
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


def load() -> float:
    return round(os.getloadavg()[0], 2)


def train(work: Path, args: argparse.Namespace) -> tuple[str, str]:
    """(best weights, snapshot URI) of a short run on the easy synthetic set."""

    from cocoseg.config import load_config, with_values
    from cocoseg.engine.checks import ensure_ray
    from cocoseg.ingest.synthetic import write_synthetic_coco
    from pipelines import ingest
    from pipelines import train as train_job

    total = args.train_images + args.val_images
    write_synthetic_coco(str(work / "src"), images=total, size=(args.imgsz, args.imgsz * 3 // 4), seed=0,
                         val_fraction=args.val_images / total)
    cfg = load_config(None, [f"storage.root={work}", f"ingest.source={work / 'src'}", "model.num_classes=4",
                             f"model.imgsz={args.imgsz}", f"train.epochs={args.epochs}", "train.batch_size=16",
                             "scaling.num_workers=1", "scaling.use_gpu=false", "tracking.run_name=bench-int8"])
    os.environ.setdefault("RAY_worker_niceness", "0")
    ensure_ray(cfg.scaling, cfg.data, cfg.validation)
    manifest = ingest.run(cfg)
    result = train_job.run(with_values(cfg, {"train.snapshot": manifest["snapshot_uri"]}))
    return result.best_weights, manifest["snapshot_uri"]


def export(weights: str, snapshot: str, out: Path, imgsz: int, args: argparse.Namespace, exclude: list[str]) -> Path:
    from cocoseg.config import load_config
    from cocoseg.export.job import export_checkpoint

    cfg = load_config(None, [f"storage.root={out.parent}", f"export.imgsz={imgsz}", "export.bench=false",
                             "export.formats=[onnx,onnx-int8]", f"export.calibration_images={args.calibration_images}",
                             f"export.int8_exclude=[{','.join(exclude)}]"])
    export_checkpoint(cfg, weights, str(out), snapshot=snapshot)
    return out


def accuracy(export_dir: Path, snapshot: str, backends: list[str]) -> dict[str, dict[str, float]]:
    from cocoseg.batch.served import measure_served
    from cocoseg.cluster import start_ray
    from cocoseg.config import load_config

    start_ray(log_to_driver=False)
    cfg = load_config(None, ["evaluate.actors=1", "evaluate.batch_size=16"])
    doc = measure_served(cfg, str(export_dir), snapshot, "val", backends)
    return {b: {k: v["metrics"][f"val/{k}"] for k in ("mask_ap50_95", "box_ap50_95", "mask_ap50")}
            for b, v in doc["backends"].items()}


def latency(onnx_file: Path, imgsz: int, batch: int, runs: int) -> dict[str, float]:
    """Median process CPU ms and wall ms of one forward at ``batch`` (1 intra-op thread)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(onnx_file), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(2):
        session.run(["pred", "proto"], {"images": x})
    cpu, wall = [], []
    for _ in range(runs):
        c0, w0 = time.process_time(), time.perf_counter()
        session.run(["pred", "proto"], {"images": x})
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return {"cpu_ms": round(statistics.median(cpu), 2), "wall_ms": round(statistics.median(wall), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--latency-imgsz", type=int, default=640, help="0: accuracy only")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--exclude", action="append", default=[], help="an INT8 variant keeping these in float")
    parser.add_argument("--weights", default="", help="skip training: a checkpoint (needs --snapshot)")
    parser.add_argument("--snapshot", default="")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    out = {"args": vars(args), "load_start": load(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        weights, snapshot = (args.weights, args.snapshot) if args.weights else train(work / "train", args)
        out["train_s"] = round(time.perf_counter() - t0, 1)
        variants = [[]] + [[e] if "," not in e else e.split(",") for e in args.exclude]
        for i, exclude in enumerate(variants):
            name = "int8" + (f" excluding {'+'.join(exclude)}" if exclude else " (whole graph)")
            acc_dir = export(weights, snapshot, work / f"acc{i}", args.imgsz, args, exclude)
            acc = accuracy(acc_dir, snapshot, ["torch", "onnx", "onnx-int8"])
            lat = {}
            if args.latency_imgsz:  # 0: accuracy only
                lat_dir = export(weights, snapshot, work / f"lat{i}", args.latency_imgsz, args, exclude)
                lat = {f"batch{b}": {fmt: latency(lat_dir / f, args.latency_imgsz, b, args.runs)
                                     for fmt, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))}
                       for b in (1, 8)}
            card = json.loads((acc_dir / "model_card.json").read_text())["export"]["onnx_int8"]
            row = {"variant": name, "accuracy": acc, "latency": lat, "excluded_nodes": card["excluded_nodes"],
                   "mask_drop_vs_fp32_onnx": acc["onnx"]["mask_ap50_95"] - acc["onnx-int8"]["mask_ap50_95"],
                   "box_drop_vs_fp32_onnx": acc["onnx"]["box_ap50_95"] - acc["onnx-int8"]["box_ap50_95"],
                   "cpu_ratio": {b: v["int8"]["cpu_ms"] / v["fp32"]["cpu_ms"] for b, v in lat.items()},
                   "wall_ratio": {b: v["int8"]["wall_ms"] / v["fp32"]["wall_ms"] for b, v in lat.items()}}
            out.setdefault("variants", []).append(row)
            print(f"{name}: mask AP50-95 eager {acc['torch']['mask_ap50_95']:.4f}, fp32 ONNX "
                  f"{acc['onnx']['mask_ap50_95']:.4f}, INT8 {acc['onnx-int8']['mask_ap50_95']:.4f} "
                  f"(drop {row['mask_drop_vs_fp32_onnx']:+.4f}; box drop {row['box_drop_vs_fp32_onnx']:+.4f})")
            for b, v in lat.items():
                print(f"  {b} @ {args.latency_imgsz}px, 1 thread: fp32 {v['fp32']['cpu_ms']} ms CPU "
                      f"({v['fp32']['wall_ms']} wall), INT8 {v['int8']['cpu_ms']} ms CPU ({v['int8']['wall_ms']} wall): "
                      f"ratio {row['cpu_ratio'][b]:.3f} CPU, {row['wall_ratio'][b]:.3f} wall")
    out["load_end"] = load()
    print(f"load average (1 min): {out['load_start']} at the start, {out['load_end']} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
