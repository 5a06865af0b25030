"""Evaluate job images/s against a single-process loop doing the same inference + COCOeval (issue 10).

    PYTHONPATH=$PWD python tests/benchmarks/bench_evaluate.py [--images 200] [--imgsz 640] [--batch-size 8]

A synthetic snapshot (``cocoseg.ingest.synthetic`` shapes, 640 x 480 JPEGs, half of them in ``val``)
is ingested by ``pipelines.ingest`` on a private local Ray holding all this host's CPUs. The
weights: an n variant, 4 classes, class biases raised so every image keeps ``max_det`` (300)
detections with masks at the evaluation conf 0.001 (the worst case for the driver's memory).

- **job**: ``pipelines.evaluate.run`` (no MLflow) with 1 actor (1 CPU), then with 2 actors
  (1 CPU each when the host has >= 3 CPUs, else 0.5 each: then the two actors, the read tasks
  and the driver share 2 cores and the 2-actor figure is not a scaling figure; it says so).
  Its images/s is the job's own ``images_per_s``: from the dataset's creation to the last
  detections at the driver (actor start and model load included, COCOeval excluded), as the
  loop's.
- **loop**: one process, one torch thread, the same shards read with pyarrow, the same
  :class:`cocoseg.inference.DetectBatch` (model load included) over batches of the same size,
  the same ``COCOEvaluator``; its metrics are checked equal to the job's.
- **driver memory**: peak RSS (``VmHWM``, reset before each job through ``/proc/self/clear_refs``)
  minus RSS before the job, per image and per detection, against the 1.2 MB of one 640 x 640 RGB
  input (what the driver would hold per image if pixels travelled to it).

Prints both rates, their ratio (target >= 0.9x), 2 actors / 1 actor (target >= 1.6x where the
cores allow), the memory figures and ``os.getloadavg()`` at start and end. Defaults run in
about 2 minutes on a quiet 2-core host.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
INPUT_BYTES_640 = 640 * 640 * 3


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _weights(dest: Path, imgsz: int) -> str:
    from cocoseg.model import ModelCard, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("n", 4)
    with torch.no_grad():
        for branch in model.head.cv3:
            branch[-1].bias[:] = torch.tensor([0.5, -1.0, -2.0, 1.0])
    save_checkpoint(str(dest), model.eval(), ModelCard(variant="n", num_classes=4,
                                                       class_names=["circle", "square", "triangle", "star"],
                                                       imgsz=imgsz))
    return str(dest)


def _snapshot(root: Path, images: int) -> str:
    """Synthetic shapes (640 x 480, half in val) -> ``pipelines.ingest`` -> snapshot URI (as
    ``tests/_train_support.make_snapshot``, at a COCO-like size)."""
    from cocoseg.config import load_config
    from cocoseg.ingest.synthetic import write_synthetic_coco
    from pipelines import ingest

    src = root / "src"
    write_synthetic_coco(str(src), images=images, size=(640, 480), seed=0, val_fraction=0.5, max_instances=3)
    return ingest.run(load_config(None, [f"ingest.source={src}", f"storage.root={root}"])).manifest.snapshot_uri


def single_process_loop(weights: str, snapshot: str, split: str, imgsz: int, batch_size: int) -> dict[str, Any]:
    """What the job does, in one process: read, DetectBatch, COCOEvaluator. Timed like the job."""
    import pyarrow.parquet as pq

    from cocoseg import storage
    from cocoseg.data.schema import list_shards, read_manifest, snapshot_to_coco
    from cocoseg.data.stage import INPUT_COLUMNS
    from cocoseg.inference import DetectBatch, Protocol, detections_from_row
    from cocoseg.metrics import COCOEvaluator, flatten_metrics
    from cocoseg.model.weights import read_card

    manifest = read_manifest(snapshot)
    card = read_card(weights)
    protocol = Protocol(imgsz=imgsz)
    evaluator = COCOEvaluator(snapshot_to_coco(snapshot, split), category_ids=list(manifest.category_ids))
    start, images = time.perf_counter(), 0
    detect = DetectBatch(weights=weights, protocol=protocol.to_dict(), num_classes=card.num_classes, threads=1)
    for shard in list_shards(manifest, split):
        table = pq.read_table(io.BytesIO(storage.read_bytes(shard)), columns=list(INPUT_COLUMNS))
        for offset in range(0, table.num_rows, batch_size):
            rows = detect(table.slice(offset, batch_size)).to_pylist()
            evaluator.process([r["image_id"] for r in rows], [detections_from_row(r) for r in rows])
            images += len(rows)
    inference_s = time.perf_counter() - start
    flat = flatten_metrics(evaluator.evaluate())
    return {"images": images, "inference_s": inference_s, "total_s": time.perf_counter() - start,
            "images_per_s": images / inference_s, "protocol_hash": protocol.hash(),
            "metrics": {k: flat[k] for k in ("box/AP", "box/AP50", "mask/AP", "mask/AP50")}}


def run_job(tmp: Path, weights: str, snapshot: str, *, actors: int, cpus_per_actor: float, imgsz: int,
            batch_size: int) -> dict[str, Any]:
    """``pipelines.evaluate.run`` once; adds the wall time and the driver's RSS before / peak (MB)."""
    from cocoseg.config import load_config
    from pipelines import evaluate

    cfg = load_config(None, [f"evaluate.imgsz={imgsz}", f"evaluate.actors={actors}",
                             f"evaluate.cpus_per_actor={cpus_per_actor}", f"evaluate.batch_size={batch_size}",
                             "evaluate.threads_per_actor=1", f"storage.root={tmp}"])
    reset = _reset_peak_rss()
    rss_before = _rss_mb("VmRSS")
    start = time.perf_counter()
    doc = evaluate.run(cfg, weights, snapshot, out=str(tmp / f"eval-{actors}"), log_mlflow=False)
    return {"doc": doc, "wall_s": time.perf_counter() - start, "rss_before": rss_before,
            "rss_peak": _rss_mb("VmHWM"), "peak_reset": reset}


def _report(args: argparse.Namespace, jobs: dict[int, dict[str, Any]], loop: dict[str, Any],
            cpus_per_actor_2: float, load: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    one, two = jobs[1], jobs[2]
    images, detections = one["doc"]["images"], one["doc"]["detections"]
    coco = one["doc"]["metrics"]
    same = {"box/AP": "val/box_ap50_95", "box/AP50": "val/box_ap50", "mask/AP": "val/mask_ap50_95",
            "mask/AP50": "val/mask_ap50"}
    diff = max(abs(loop["metrics"][k] - coco[v]) for k, v in same.items())
    cpus = os.cpu_count() or 1
    print(f"\nbench_evaluate: {images} val images (synthetic 640 x 480 JPEGs) at imgsz {args.imgsz}, n variant, "
          f"{detections} detections ({detections / images:.0f} per image), batch {args.batch_size}, "
          f"1 torch thread per model, {cpus} CPUs")
    for n in (1, 2):
        doc = jobs[n]["doc"]
        print(f"  job, {n} actor(s) ({1.0 if n == 1 else cpus_per_actor_2:g} CPU each): {doc['images_per_s']:.2f} img/s "
              f"(inference; {images / jobs[n]['wall_s']:.2f} img/s end to end incl. COCOeval, {jobs[n]['wall_s']:.1f} s)")
    print(f"  single-process loop:            {loop['images_per_s']:.2f} img/s "
          f"(inference; {images / loop['total_s']:.2f} img/s end to end incl. COCOeval, {loop['total_s']:.1f} s)")
    print(f"  ratio job (1 actor) / loop:     {one['doc']['images_per_s'] / loop['images_per_s']:.2f}x (target >= 0.9x)")
    best = max(one["doc"]["images_per_s"], two["doc"]["images_per_s"])
    print(f"  ratio best job / loop:          {best / loop['images_per_s']:.2f}x")
    scaling = two["doc"]["images_per_s"] / one["doc"]["images_per_s"]
    fair = cpus >= 3
    print(f"  2 actors / 1 actor:             {scaling:.2f}x (target >= 1.6x where the cores allow)"
          + ("" if fair else f": NOT a fair figure on {cpus} CPUs (2 actors at {cpus_per_actor_2:g} CPU share the "
                             "cores with the read tasks and the driver)"))
    print(f"  metrics, loop vs job:           max |diff| {diff:.2e} over box/mask AP and AP50"
          f" (protocol hash {'equal' if loop['protocol_hash'] == one['doc']['protocol_hash'] else 'DIFFERENT'})")
    for n in (1, 2):
        j = jobs[n]
        grown = max(j["rss_peak"] - j["rss_before"], 0.0) * 2**20
        print(f"  driver RSS, {n} actor(s):          {j['rss_before']:.0f} MB before, peak {j['rss_peak']:.0f} MB: "
              f"+{grown / 2**20:.1f} MB = {grown / images / 1024:.1f} KiB per image, {grown / detections:.0f} B per "
              f"detection (a 640 x 640 RGB input is {INPUT_BYTES_640 / 1024:.0f} KiB)"
              + ("" if j["peak_reset"] else " [peak not resettable here: includes earlier work]"))
    (b1, b5, b15), (a1, a5, a15) = load
    print(f"  load average (1, 5, 15 min): start {b1:.2f} {b5:.2f} {b15:.2f}, end {a1:.2f} {a5:.2f} {a15:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="synthetic images in all (half go to val)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=8, help="evaluate.batch_size (and the loop's)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    from cocoseg.cluster import start_ray

    load_start = os.getloadavg()
    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    cpus_per_actor_2 = 1.0 if cpus >= 3 else 0.5
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as name:
        tmp = Path(name)
        start_ray(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        snapshot = _snapshot(tmp, args.images)
        weights = _weights(tmp / "w", args.imgsz)
        jobs = {n: run_job(tmp, weights, snapshot, actors=n, cpus_per_actor=1.0 if n == 1 else cpus_per_actor_2,
                           imgsz=args.imgsz, batch_size=args.batch_size) for n in (1, 2)}
        loop = single_process_loop(weights, snapshot, "val", args.imgsz, args.batch_size)
    _report(args, jobs, loop, cpus_per_actor_2, (load_start, os.getloadavg()))
    print(f"  bench wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
