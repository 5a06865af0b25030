"""INT8 for CPU serving (issue 23, item 4). A plain script:

    python tests/benchmarks/bench_int8.py [--epochs 12] [--train-images 160] [--val-images 48] [--imgsz 160]
        [--latency-imgsz 640] [--exclude head-final] [--workdir DIR] [--json PATH]
        [--threads 1 0] [--rounds 6] [--runs 2] [--lat-dir EXPORT_DIR (latency only)]

Trains the n model on the project's easy synthetic shapes (``cocoseg.ingest.synthetic``, 4 classes)
through the real jobs (ingest -> ``pipelines.train.run`` on a private local Ray, one CPU worker),
exports it with ``export.formats=[onnx,onnx-int8]`` (``--calibration-images`` train images,
seeded) and evaluates the eager model, the fp32 ONNX and the INT8 ONNX in one pass on the val split
(``cocoseg.batch.served.measure_served``, pycocotools): the INT8 graph's mask / box AP50-95 drop
against the fp32 ONNX. Latency: the same weights exported at ``--latency-imgsz`` (the served size),
both graphs under ONNX Runtime on the CPU with each ``--threads`` intra-op thread count (1, and
0 = ONNX Runtime's default of one per core), the graph's forward alone on a fixed input at
batch 1 and 8: ``--rounds`` rounds of ``--runs`` forwards per graph after 2 warm-up runs, fp32
and INT8 alternating (the order flips every round, so load changes on a shared host hit both
alike); the figure is the median of the process CPU time per forward (wall time printed beside
it), the ratio INT8 / fp32 taken inside one call, with the load average before and after it. Every
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
    manifest = ingest.run(cfg).manifest
    result = train_job.run(with_values(cfg, {"train.snapshot": manifest.snapshot_uri}))
    return result.best_weights, manifest.snapshot_uri


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


def latency(files: dict[str, Path], imgsz: int, batch: int, runs: int, rounds: int,
            threads: int) -> dict[str, dict[str, float]]:
    """Per graph: median process CPU ms and wall ms of one forward at ``batch``, rounds interleaved.

    ``threads``: ONNX Runtime intra-op threads (0 = its default, one per core). Every graph gets
    ``runs`` forwards per round, the graphs alternate order each round, so load changes on this
    shared host hit every graph alike; the ratio is taken inside this one call.
    """
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sessions = {k: ort.InferenceSession(str(f), sess_options=opts, providers=["CPUExecutionProvider"])
                for k, f in files.items()}
    x = np.random.default_rng(0).random((batch, 3, imgsz, imgsz), dtype=np.float32)
    for session in sessions.values():
        for _ in range(2):
            session.run(["pred", "proto"], {"images": x})
    cpu: dict[str, list[float]] = {k: [] for k in files}
    wall: dict[str, list[float]] = {k: [] for k in files}
    for r in range(rounds):
        for k in (list(files) if r % 2 == 0 else list(files)[::-1]):
            for _ in range(runs):
                c0, w0 = time.process_time(), time.perf_counter()
                sessions[k].run(["pred", "proto"], {"images": x})
                cpu[k].append((time.process_time() - c0) * 1e3)
                wall[k].append((time.perf_counter() - w0) * 1e3)
    return {k: {"cpu_ms": round(statistics.median(cpu[k]), 2), "wall_ms": round(statistics.median(wall[k]), 2)}
            for k in files}


def latency_table(lat_dir: Path, args: argparse.Namespace) -> dict[str, dict]:
    """{"batch1@1t": {"fp32": .., "int8": .., "cpu_ratio": .., "load": ..}, ...} for each batch and thread count."""
    files = {"fp32": lat_dir / "model.onnx", "int8": lat_dir / "model.int8.onnx"}
    table = {}
    for threads in args.threads:
        for batch in (1, 8):
            before = load()
            v = latency(files, args.latency_imgsz, batch, args.runs, args.rounds, threads)
            table[f"batch{batch}@{threads or 'default'}t"] = {
                **v, "cpu_ratio": v["int8"]["cpu_ms"] / v["fp32"]["cpu_ms"],
                "wall_ratio": v["int8"]["wall_ms"] / v["fp32"]["wall_ms"], "load": [before, load()],
                "time": time.strftime("%H:%M UTC", time.gmtime())}
    return table


def _print_latency(table: dict[str, dict], args: argparse.Namespace) -> None:
    for key, v in table.items():
        print(f"  {key} @ {args.latency_imgsz}px ({v['time']}, load {v['load'][0]} -> {v['load'][1]}): fp32 "
              f"{v['fp32']['cpu_ms']} ms CPU ({v['fp32']['wall_ms']} wall), INT8 {v['int8']['cpu_ms']} ms CPU "
              f"({v['int8']['wall_ms']} wall): ratio {v['cpu_ratio']:.3f} CPU, {v['wall_ratio']:.3f} wall")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--latency-imgsz", type=int, default=640, help="0: accuracy only")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2, help="forwards per graph per round")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved fp32 / INT8 rounds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="ONNX Runtime intra-op threads to measure (0: its default)")
    parser.add_argument("--lat-dir", default="", help="skip training and accuracy: time this export dir's graphs")
    parser.add_argument("--exclude", action="append", default=[], help="an INT8 variant keeping these in float")
    parser.add_argument("--weights", default="", help="skip training: a checkpoint (needs --snapshot)")
    parser.add_argument("--snapshot", default="")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    out = {"args": vars(args), "load_start": load(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    variants: list[list[str]] = []
    if args.lat_dir:  # latency only, of an existing export (model.onnx + model.int8.onnx)
        out["latency"] = latency_table(Path(args.lat_dir), args)
        _print_latency(out["latency"], args)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        if not args.lat_dir:
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
                lat = latency_table(lat_dir, args)
            card = json.loads((acc_dir / "model_card.json").read_text())["export"]["onnx_int8"]
            row = {"variant": name, "accuracy": acc, "latency": lat, "excluded_nodes": card["excluded_nodes"],
                   "mask_drop_vs_fp32_onnx": acc["onnx"]["mask_ap50_95"] - acc["onnx-int8"]["mask_ap50_95"],
                   "box_drop_vs_fp32_onnx": acc["onnx"]["box_ap50_95"] - acc["onnx-int8"]["box_ap50_95"],
                   "cpu_ratio": {b: v["cpu_ratio"] for b, v in lat.items()}}
            out.setdefault("variants", []).append(row)
            print(f"{name}: mask AP50-95 eager {acc['torch']['mask_ap50_95']:.4f}, fp32 ONNX "
                  f"{acc['onnx']['mask_ap50_95']:.4f}, INT8 {acc['onnx-int8']['mask_ap50_95']:.4f} "
                  f"(drop {row['mask_drop_vs_fp32_onnx']:+.4f}; box drop {row['box_drop_vs_fp32_onnx']:+.4f})")
            _print_latency(lat, args)
    out["load_end"] = load()
    print(f"load average (1 min): {out['load_start']} at the start, {out['load_end']} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
