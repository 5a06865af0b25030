"""Training benchmarks (issue 4, item 9). A plain script: ``python tests/benchmarks/bench_train.py``.

(a) Input pipeline over ``--epochs`` epochs: images/s end to end delivered by the training input
    (persistent input actors of ``cocoseg.data.train_input.TrainInput``: Parquet read -> decode -> augment
    in 2 Ray actors -> collate on the consumer), their start-up included, against a plain torch
    ``DataLoader`` with 2 worker processes doing the same work (the same ``AugmentBatch`` over the
    same Parquet files, collate in the main process), in the same run, on 2 CPUs; prints the
    ratio (target >= 1.0x) and the seconds to the first batch of every epoch (target <= 1 s from
    the second epoch on). The pipelines alternate ``--rounds`` times; the ratio is the median of
    the per-round ratios. ``--persistent`` adds a DataLoader with ``persistent_workers=True``.
(b) Training images/s with 1 and 2 workers: see ``bench_training`` (train helper).
(c) GPU figures (n and s at 640, batch 16/32, bf16, utilisation): see ``bench_gpu`` (train helper).

Data: the real coco8-seg images and polygons (``tests/fixtures/coco8-seg``), repeated under
distinct image ids, written as snapshot-shaped Parquet.

Usage: ``python tests/benchmarks/bench_train.py --part a [--images 256] [--epochs 3] [--imgsz 640]
[--preset yolov8] [--map-batch 16] [--rounds 3] [--persistent]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.utils.data as tud  # noqa: E402

COCO8_SEG = REPO / "tests" / "fixtures" / "coco8-seg"


def _coco8_rows(n: int) -> list[dict]:
    from cocoseg.structures import COCO91_TO_COCO80

    root = COCO8_SEG
    base = []
    for split in ("train", "val"):
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        anns: dict[int, list] = {}
        for a in coco["annotations"]:
            if isinstance(a.get("segmentation"), list):
                anns.setdefault(a["image_id"], []).append(a)
        for img in coco["images"]:
            data = (root / "images" / split / img["file_name"]).read_bytes()
            base.append((img, data, [{"id": a["id"], "category": COCO91_TO_COCO80[a["category_id"]],
                                      "category_id": a["category_id"], "bbox_xywh": a["bbox"],
                                      "area": a["area"], "iscrowd": bool(a.get("iscrowd", 0)),
                                      "polygons": a["segmentation"], "rle_counts": None}
                                     for a in anns.get(img["id"], [])]))
    return [{"image_id": i + 1, "file_name": img["file_name"], "split": "train", "width": img["width"],
             "height": img["height"], "image": data, "annotations": ann}
            for i, (img, data, ann) in ((i, base[i % len(base)]) for i in range(n))]


def write_snapshot(folder: Path, n: int, files: int = 8) -> tuple[list[str], str]:
    from augment_rows import SCHEMA

    rows, source = _coco8_rows(n), "coco8-seg (repeated)"
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n // files)
    paths = []
    for k in range(files):
        path = folder / f"part-{k:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k * per:(k + 1) * per], schema=SCHEMA), path)
        paths.append(str(path))
    return paths, source


def _identity(batch):
    return batch


class ParquetAugment(tud.IterableDataset):
    """Each DataLoader worker reads its share of the files and augments them, chunk by chunk, with
    the same ``AugmentBatch`` the input actors run."""

    def __init__(self, paths: list[str], preset: str, imgsz: int, rows: int):
        self.paths, self.preset, self.imgsz, self.rows = paths, preset, imgsz, rows
        self.epoch = 0

    def __iter__(self):
        from cocoseg.data.stage import INPUT_COLUMNS, AugmentBatch

        info = tud.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        augment = AugmentBatch(preset=self.preset, imgsz=self.imgsz, seed=0, epoch=self.epoch)
        for path in self.paths[wid::nw]:
            for rb in pq.ParquetFile(path).iter_batches(batch_size=self.rows, columns=list(INPUT_COLUMNS)):
                yield augment(pa.Table.from_batches([rb]))


def _epoch(batches, collate, start: float) -> tuple[int, float, float]:
    """Consume one epoch, collating each batch; returns (images, seconds, seconds to the first batch)."""
    first = None
    images = 0
    for batch in batches:
        tb = collate(batch)
        images += int(tb.images.shape[0])
        if first is None:
            first = time.perf_counter() - start
    return images, time.perf_counter() - start, first


def _result(startup: float, epochs: list[tuple[int, float, float]]) -> dict:
    images = sum(e[0] for e in epochs)
    total = startup + sum(e[1] for e in epochs)
    return {"images": images, "startup_s": startup, "total_s": total, "total_img_s": images / total,
            "epoch_s": [e[1] for e in epochs], "first_batch_s": [e[2] for e in epochs]}


def run_torch(paths: list[str], args, persistent: bool = False) -> dict:
    """A torch DataLoader, 2 worker processes (``persistent_workers`` as given), collate here."""
    from cocoseg.data.collate import collate_train

    torch.set_num_threads(1)
    start = time.perf_counter()
    data = ParquetAugment(paths, args.preset, args.imgsz, args.map_batch)
    loader = tud.DataLoader(data, batch_size=None, num_workers=2, collate_fn=_identity, prefetch_factor=2,
                            persistent_workers=persistent)
    startup = time.perf_counter() - start  # workers start when the first epoch is iterated: in its time
    epochs = []
    for epoch in range(args.epochs):
        data.epoch = epoch  # seen by non-persistent workers (forked per epoch)
        epochs.append(_epoch(loader, collate_train, time.perf_counter()))
    return _result(startup, epochs)


def run_ray(paths: list[str], args) -> dict:
    """The training input: the persistent input actors (2, 1 CPU each), one stream over all epochs,
    batches of ``--batch`` re-cut from chunks of ``--map-batch`` rows, collate here."""
    from cocoseg.data.collate import collate_train
    from cocoseg.data.train_input import TrainInput

    rows = [pq.ParquetFile(p).metadata.num_rows for p in paths]
    start = time.perf_counter()
    inputs = TrainInput.start(list(zip(paths, rows, strict=True)), augment=args.preset, epochs=args.epochs,
                              close_mosaic=0, imgsz=args.imgsz, seed=0, actors=2, cpus_per_actor=1.0,
                              chunk_rows=args.map_batch)
    startup = time.perf_counter() - start
    try:
        stream = inputs.for_worker(0, 1)
        epochs = [_epoch(stream.epoch(e, batch_size=args.batch), collate_train, time.perf_counter())
                  for e in range(args.epochs)]
    finally:
        inputs.stop()
    return _result(startup, epochs)


class _Side:
    """A DataLoader run in a second Python process, started now; ``result()`` waits for it."""

    def __init__(self, paths: list[str], args, out: Path):
        cmd = [sys.executable, __file__, "--part", "a", "--only", "torch", "--data", str(Path(paths[0]).parent),
               "--images", str(args.images), "--epochs", str(args.epochs), "--imgsz", str(args.imgsz),
               "--preset", args.preset, "--map-batch", str(args.map_batch), "--batch", str(args.batch),
               "--rounds", "1", "--json", str(out)]
        self.out, self.proc = out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def result(self) -> dict:
        if self.proc.wait() != 0:
            raise RuntimeError(f"the side-by-side DataLoader run failed (exit {self.proc.returncode})")
        return json.loads(self.out.read_text())


_side = _Side


def part_a(args) -> dict:
    import ray

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:  # the files of a parent run (--side-by-side)
            paths, source = sorted(str(p) for p in Path(args.data).glob("*.parquet")), "parent run"
        else:
            paths, source = write_snapshot(Path(tmp) / "train", args.images)
        # workers inherit the environment: make the repo importable in Ray's worker processes
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        # 2 physical cores; logical CPUs over-subscribed (as in tests/conftest.py)
        if args.only != "torch":
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        # Ray's first actor in a fresh cluster pays worker-process start and imports; a training
        # job pays that once per cluster, so it stays out of the rounds (each round still starts
        # and stops its own input actors, inside its timing).
        warm = time.perf_counter()
        if args.only != "torch":
            ray.get(ray.remote(lambda: None).remote())
            print(f"Ray warm-up (first task in the cluster): {time.perf_counter() - warm:.1f} s", flush=True)
        pipes = {"ray": run_ray, "torch": run_torch}
        if args.persistent:
            pipes["torch_persistent"] = lambda p, a: run_torch(p, a, persistent=True)
        if args.only:
            pipes = {args.only: pipes[args.only]}
        results = {name: [] for name in pipes}
        try:
            for r in range(args.rounds):
                if args.side_by_side:  # the DataLoader in a second process, at the same time
                    results["torch"].append(_side(paths, args, Path(tmp) / f"torch-{r}.json"))
                for name, fn in pipes.items():
                    if args.side_by_side and name == "torch":
                        res = results["torch"][-1] = results["torch"][-1].result()
                    else:
                        res = fn(paths, args)
                        results[name].append(res)
                    print(f"round {r} {name:16s}: {res['images']} images in {args.epochs} epochs, "
                          f"{res['total_img_s']:.1f} img/s end to end (start-up {res['startup_s']:.2f} s); first batch "
                          f"per epoch {', '.join(f'{x:.2f}' for x in res['first_batch_s'])} s", flush=True)
        finally:
            if ray.is_initialized():
                ray.shutdown()
    if args.only:
        Path(args.json).write_text(json.dumps(results[args.only][0]))
        return {}
    ratio = {name: statistics.median(r["total_img_s"] / t["total_img_s"]
                                     for r, t in zip(results["ray"], results[name], strict=True))
             for name in pipes if name != "ray"}
    summary = {"data": source, "images_per_epoch": args.images, "epochs": args.epochs, "imgsz": args.imgsz,
               "preset": args.preset, "map_batch": args.map_batch, "batch": args.batch, "rounds": args.rounds,
               "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
               # per round (the pipelines ran back to back under the same load), then the median
               "ratio_end_to_end": ratio, "rounds_detail": results}
    later = [x for r in results["ray"] for x in r["first_batch_s"][1:]]
    print(f"(a) input pipeline, {args.images} images/epoch x {args.epochs} epochs at {args.imgsz}, preset "
          f"{args.preset}: persistent input actors vs DataLoader(2 workers) end to end -> "
          + ", ".join(f"{v:.2f}x vs {k}" for k, v in ratio.items())
          + f" (target >= 1.0x); first batch of epochs 2..{args.epochs}: max {max(later, default=float('nan')):.2f} s "
          f"(target <= 1 s); load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    return summary


from benchmarks._train_parts import part_b, part_c  # noqa: E402 (the train helper's parts)

PARTS = {"a": part_a, "b": part_b, "c": part_c}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--preset", default="yolov8")
    parser.add_argument("--map-batch", type=int, default=16, help="rows per augmentation call")
    parser.add_argument("--batch", type=int, default=16, help="rows per collated training batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="", help="also write the summary here")
    parser.add_argument("--epochs", type=int, default=3, help="(a) epochs per pipeline run; (b) per training run")
    parser.add_argument("--persistent", action="store_true", help="(a) also a DataLoader with persistent_workers")
    parser.add_argument("--side-by-side", action="store_true",
                        help="(a) run the DataLoader in a second process at the same time as the Ray input (pairs "
                             "the two under the same load when the host's load swings)")
    parser.add_argument("--only", default="", help=argparse.SUPPRESS)  # internal: one pipeline, one round
    parser.add_argument("--data", default="", help=argparse.SUPPRESS)  # internal: reuse these Parquet files
    parser.add_argument("--train-imgsz", type=int, default=160, help="(b) input size of the training runs")
    parser.add_argument("--steps", type=int, default=20, help="(c) timed GPU steps per configuration")
    args = parser.parse_args(argv)
    out = {}
    for part in args.part.split(","):
        out[part] = PARTS[part](args)
    if args.json and not args.only:  # (--only wrote its own result there)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
