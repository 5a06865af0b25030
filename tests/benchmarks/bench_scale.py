"""COCO-shaped scale benchmark (issue 15): ingest -> one training epoch -> evaluate, at two sizes.

    PYTHONPATH=$PWD .venv/bin/python tests/benchmarks/bench_scale.py --images 2000,8000 [--imgsz 128]
    PYTHONPATH=$PWD .venv/bin/python tests/benchmarks/bench_scale.py --part presets   # decode+augment per core

For each train size N (val = ``--val-fraction`` x N) it writes a synthetic set with COCO's
per-image statistics under ``--root`` (:func:`cocoseg.ingest.synthetic.write_coco_like`: COCO's image
sizes, ~7.3 instances per image, polygons and ~1 % crowd RLE, the 80 COCO category ids), starts one
private local Ray (``--object-store-mb``) and runs the real jobs' ``run()``: ``pipelines.ingest``,
``pipelines.train`` (1 epoch at ``--imgsz``, 1 worker, validation on the whole val split) and
``pipelines.evaluate`` over the val split. A sampling thread (every ``--sample-s``) records, per
stage: the peak RSS of the driver and of each Ray process kind (by process title: input actors,
train workers, evaluate actors, ingest tasks, ...), the object store in use and spilled
(``ray memory --stats-only``), the bytes the processes read and wrote (``/proc/<pid>/io``
``rchar``/``wchar``: files and sockets) and their CPU seconds; plus wall time, images/s and the
load average at the start and end. Prints one table per size and a comparison (per-image cost
and peak-memory growth per image between the sizes); ``--json`` writes everything.

``--part presets``: decode + augment CPU seconds per image at 640 (1 thread, 1 process) for each
augmentation preset, over COCO-shaped images: the figures of ``cocoseg.engine.capacity``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO)]

import psutil  # noqa: E402

KINDS = (("ChunkAugmenter", "input actor"), ("DetectBatch", "evaluate actor"), ("RayTrainWorker", "train worker"),
         ("TrainController", "train controller"), ("_shard_task", "ingest task"), ("ReadParquet", "read task"),
         ("SplitCoordinator", "data coordinator"), ("gcs_server", "ray daemons"), ("raylet", "ray daemons"),
         ("dashboard", "ray daemons"), ("log_monitor", "ray daemons"), ("IDLE", "idle worker"), ("ray::", "other ray task"))


def _kind(proc: psutil.Process) -> str:
    try:
        title = " ".join(proc.cmdline()[:2]) or proc.name()
    except (psutil.Error, IndexError):
        return ""
    for needle, kind in KINDS:
        if needle in title:
            return kind
    return "other child"


class Monitor:
    """Samples the driver and its descendant processes (a private local Ray runs under the driver)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.me = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak_rss: dict[str, int] = {}
        self.driver_start_rss = self.me.memory_info().rss
        self.io_first: dict[int, tuple[int, int, float]] = {}
        self.io_last: dict[int, tuple[int, int, float]] = {}
        self.store_peak_mb = 0.0
        self.spilled_mb = 0.0
        self.load_start = os.getloadavg()
        self.t0 = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()
        wall = time.perf_counter() - self.t0
        read = sum(self.io_last[p][0] - self.io_first[p][0] for p in self.io_last)
        written = sum(self.io_last[p][1] - self.io_first[p][1] for p in self.io_last)
        cpu = sum(self.io_last[p][2] - self.io_first[p][2] for p in self.io_last)
        return {"wall_s": wall, "cpu_s": cpu, "load_start": self.load_start, "load_end": os.getloadavg(),
                "driver_start_mb": self.driver_start_rss / 2**20,
                "peak_rss_mb": {k: v / 2**20 for k, v in sorted(self.peak_rss.items())},
                "store_peak_mb": self.store_peak_mb, "spilled_mb": self.spilled_mb,
                "read_mb": read / 1e6, "written_mb": written / 1e6}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        procs = [(self.me, "driver")]
        try:
            procs += [(p, _kind(p)) for p in self.me.children(recursive=True)]
        except psutil.Error:
            pass
        for proc, kind in procs:
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    io = proc.io_counters()
                    t = proc.cpu_times()
            except psutil.Error:
                continue
            if not kind:
                continue
            self.peak_rss[kind] = max(self.peak_rss.get(kind, 0), rss)
            now = (io.read_chars, io.write_chars, t.user + t.system + t.children_user + t.children_system)
            self.io_first.setdefault(proc.pid, now)
            self.io_last[proc.pid] = now
        self._store()

    def _store(self) -> None:
        try:
            import ray
            from ray._private.internal_api import memory_summary

            if not ray.is_initialized():
                return
            text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
        except Exception:  # Ray starting or stopping: skip this sample
            return
        used = re.search(r"Plasma memory usage ([\d.]+) MiB", text)
        spilled = re.search(r"Spilled ([\d.]+) MiB", text)
        if used:
            self.store_peak_mb = max(self.store_peak_mb, float(used.group(1)))
        if spilled:
            self.spilled_mb = max(self.spilled_mb, float(spilled.group(1)))


def _stage(monitor: Monitor, name: str, images: int, fn):
    print(f"  {name}: {images} images ...", flush=True)
    monitor.start()
    out = fn()
    stats = monitor.stop()
    stats.update(stage=name, images=images, images_per_s=images / stats["wall_s"],
                 ms_per_image=1000 * stats["wall_s"] / images, cpu_ms_per_image=1000 * stats["cpu_s"] / images)
    print(f"    {stats['wall_s']:.1f} s, {stats['images_per_s']:.1f} img/s, driver peak "
          f"{stats['peak_rss_mb'].get('driver', 0):.0f} MB, load {stats['load_start'][0]:.1f} -> "
          f"{stats['load_end'][0]:.1f}", flush=True)
    return out, stats


def run_size(n_train: int, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from cocoseg.cluster import start_ray
    from cocoseg.config import load_config
    from cocoseg.ingest.synthetic import write_coco_like
    from pipelines import evaluate, ingest, train

    n_val = max(1, round(n_train * args.val_fraction))
    root = Path(args.root) / f"n{n_train}"
    source = root / "source"
    if not (source / "annotations" / "instances_val.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        gen = write_coco_like(str(source), n_train, n_val, seed=0)
        print(f"  generated {n_train}+{n_val} images ({gen['bytes'] / 1e9:.2f} GB) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    for sub in ("snapshots", "runs", "evals", "mlflow.db", "mlartifacts"):
        shutil.rmtree(root / sub, ignore_errors=True) if (root / sub).is_dir() else (root / sub).unlink(missing_ok=True)
    monitor = Monitor(args.sample_s)
    start_ray(address="local", num_cpus=args.ray_cpus, include_dashboard=False,
              object_store_memory=args.object_store_mb * 2**20)
    out: dict[str, Any] = {"train_images": n_train, "val_images": n_val, "stages": []}
    try:
        common = [f"storage.root={root}", f"ingest.source={source}"]
        cfg = load_config(None, common)
        manifest, stats = _stage(monitor, "ingest", n_train + n_val, lambda: ingest.run(cfg).manifest)
        out["stages"].append(stats)
        out["snapshot_mb"] = sum(s.bytes for sp in manifest.splits.values() for s in sp.shards) / 1e6
        tcfg = load_config(str(REPO / "pipelines/configs/demo.yaml"), [
            *common, f"train.snapshot={manifest.snapshot_uri}", "model.num_classes=80", f"model.imgsz={args.imgsz}",
            f"model.variant={args.variant}", "train.epochs=1", "train.close_mosaic=0", f"train.batch_size={args.batch}",
            f"train.nominal_batch={args.batch}", f"data.actors={args.data_actors}", "tracking.run_name=scale",
            f"export.imgsz={args.imgsz}", "tracking.system_metrics=false"])
        trained, stats = _stage(monitor, "train (1 epoch + val)", n_train, lambda: train.run(tcfg))
        out["stages"].append(stats)
        ecfg = load_config(str(REPO / "pipelines/configs/evaluate.yaml"), [*common, "evaluate.batch_size=16"])
        doc, stats = _stage(monitor, "evaluate", n_val, lambda: evaluate.run(
            ecfg, trained.best_weights, manifest.snapshot_uri, split="val", out=str(root / "evals"),
            log_mlflow=False))
        stats["detections"] = doc["detections"]
        out["stages"].append(stats)
    finally:
        ray.shutdown()
    return out


def _table(result: dict[str, Any]) -> str:
    kinds = sorted({k for s in result["stages"] for k in s["peak_rss_mb"]})
    head = ["stage", "images", "wall s", "img/s", "wall ms/img", "CPU ms/img", "load start -> end",
            "store peak MB", "spilled MB", "read MB", "written MB", *[f"{k} peak MB" for k in kinds]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in result["stages"]:
        cells = [s["stage"], f"{s['images']:,}", f"{s['wall_s']:.1f}", f"{s['images_per_s']:.1f}",
                 f"{s['ms_per_image']:.2f}", f"{s['cpu_ms_per_image']:.2f}",
                 f"{s['load_start'][0]:.1f} -> {s['load_end'][0]:.1f}", f"{s['store_peak_mb']:.0f}",
                 f"{s['spilled_mb']:.0f}", f"{s['read_mb']:.0f}", f"{s['written_mb']:.0f}",
                 *[f"{s['peak_rss_mb'].get(k, 0):.0f}" if k in s["peak_rss_mb"] else "-" for k in kinds]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _compare(small: dict[str, Any], large: dict[str, Any]) -> str:
    lines = [f"growth from {small['train_images']:,} to {large['train_images']:,} train images "
             "(peak RSS: KB per extra image of the stage; per-image cost: large / small)"]
    for a, b in zip(small["stages"], large["stages"], strict=True):
        extra = max(1, b["images"] - a["images"])
        grow = {k: 1024 * (b["peak_rss_mb"][k] - a["peak_rss_mb"][k]) / extra
                for k in b["peak_rss_mb"] if k in a["peak_rss_mb"]}
        parts = ", ".join(f"{k} {v:+.1f}" for k, v in grow.items())
        lines.append(f"  {a['stage']}: wall ms/img x{b['ms_per_image'] / a['ms_per_image']:.2f}, CPU ms/img "
                     f"x{b['cpu_ms_per_image'] / max(a['cpu_ms_per_image'], 1e-9):.2f}, store peak "
                     f"{a['store_peak_mb']:.0f} -> {b['store_peak_mb']:.0f} MB; RSS KB/img: {parts}")
    return "\n".join(lines)


def bench_presets(args: argparse.Namespace) -> dict[str, Any]:
    """Decode + augment CPU ms per image at ``--preset-imgsz`` for each preset (1 torch/numpy thread)."""
    import tempfile

    from cocoseg.data.augment import PRESETS
    from cocoseg.data.stage import AugmentBatch
    from cocoseg.ingest.synthetic import write_coco_like
    from cocoseg.structures import COCO91_TO_COCO80

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        write_coco_like(tmp, args.preset_images, 1, seed=1)
        coco = json.loads(Path(tmp, "annotations", "instances_train.json").read_text())
        anns: dict[int, list] = {}
        for a in coco["annotations"]:
            if not a["iscrowd"]:
                anns.setdefault(a["image_id"], []).append(
                    {"category": COCO91_TO_COCO80[a["category_id"]], "polygons": a["segmentation"],
                     "iscrowd": False, "bbox_xywh": a["bbox"], "id": a["id"], "category_id": a["category_id"],
                     "area": a["area"], "rle_counts": ""})
        rows = [{"image_id": i["id"], "width": i["width"], "height": i["height"],
                 "image": Path(tmp, "train", i["file_name"]).read_bytes(), "annotations": anns.get(i["id"], [])}
                for i in coco["images"]]
    out: dict[str, Any] = {"imgsz": args.preset_imgsz, "images": len(rows), "load_start": os.getloadavg()}
    from cocoseg.data.decode import decode_rgb

    c0 = time.process_time()
    for row in rows:
        decode_rgb(row["image"])
    out["decode"] = {"cpu_ms_per_image": 1000 * (time.process_time() - c0) / len(rows)}
    print(f"  decode only     {out['decode']['cpu_ms_per_image']:.1f} CPU ms/img", flush=True)
    chunk = 16
    for name in PRESETS:
        stage = AugmentBatch(preset=name, imgsz=args.preset_imgsz, seed=0, epoch=0, num_classes=80)
        stage(rows[:chunk])  # warm-up
        c0, w0 = time.process_time(), time.perf_counter()
        for start in range(0, len(rows), chunk):
            stage(rows[start:start + chunk])
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        out[name] = {"cpu_ms_per_image": 1000 * cpu / len(rows), "wall_ms_per_image": 1000 * wall / len(rows),
                     "images_per_cpu_s": len(rows) / cpu}
        print(f"  {name:13s} {out[name]['cpu_ms_per_image']:.1f} CPU ms/img = {out[name]['images_per_cpu_s']:.1f} "
              f"img/s per core (wall {out[name]['wall_ms_per_image']:.1f} ms)", flush=True)
    out["load_end"] = os.getloadavg()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("scale", "presets"), default="scale")
    parser.add_argument("--images", default="20000", help="train sizes, comma-separated (val = --val-fraction of each)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--root", default="/tmp/cocoseg-scale")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--variant", default="n")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data-actors", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--object-store-mb", type=int, default=2355, help="2.3 GiB, as on the 2-core host")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--preset-images", type=int, default=96)
    parser.add_argument("--preset-imgsz", type=int, default=640)
    parser.add_argument("--keep", action="store_true", help="keep the generated data, snapshot and run under --root")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.part == "presets":
        import torch

        torch.set_num_threads(1)
        result: Any = bench_presets(args)
    else:
        result = []
        for n in (int(v) for v in args.images.split(",")):
            print(f"size {n:,} train images", flush=True)
            result.append(run_size(n, args))
            print(_table(result[-1]), flush=True)
            if args.json:  # after each size, so a long second size leaves the first one's figures
                Path(args.json).write_text(json.dumps(result, indent=1))
            if not args.keep:  # source, snapshot, run and MLflow files: ~2x the JPEGs
                shutil.rmtree(Path(args.root) / f"n{n}", ignore_errors=True)
        for small, large in zip(result, result[1:], strict=False):
            print(_compare(small, large), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
