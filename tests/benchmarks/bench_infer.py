"""Batch inference job images/s against a single-process loop doing the same predictions (issue 10).

    PYTHONPATH=$PWD python tests/benchmarks/bench_infer.py [--images 160] [--imgsz 320] [--actors 0]

Both sides run the one predictor (n variant, 4 classes, class biases raised so it keeps
detections, predict mode conf 0.25, masks as RLE) with one torch thread per model, on the same
JPEG files (coco8-seg's 8 images copied to ``--images`` files). The job is ``pipelines.infer.run``
on a private local Ray with all this host's CPUs (actors sized as the job sizes them, ``--actors``
to force); its images/s is the job's own figure (from after Ray's start-up to the last part
file, actor start and model load included). The loop reads, decodes (EXIF applied), predicts and
RLE-encodes each file in turn, model load included. Prints both, their ratio (target >= 0.9x),
the load average before and after (``os.getloadavg()``: on a shared host read the ratio with
it), and the driver's peak RSS during the job against its RSS before it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _weights(dest: Path, imgsz: int) -> str:
    from cocoseg.model import ModelCard, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("n", 4)
    with torch.no_grad():
        for branch in model.head.cv3:
            branch[-1].bias[:] = torch.tensor([0.5, -1.0, -2.0, 1.0])
    save_checkpoint(str(dest), model.eval(), ModelCard(variant="n", num_classes=4, class_names=list("abcd"),
                                                       imgsz=imgsz))
    return str(dest)


def _images(folder: Path, count: int) -> list[str]:
    source = REPO / "tests" / "fixtures" / "coco8-seg" / "images"
    originals = sorted(source.rglob("*.jpg"))
    if not originals:
        sys.exit(f"bench_infer: no JPEGs under {source}")
    folder.mkdir(parents=True)
    for i in range(count):
        shutil.copy(originals[i % len(originals)], folder / f"{i:05d}.jpg")
    return sorted(str(p) for p in folder.iterdir())


def single_process_loop(weights: str, files: list[str]) -> float:
    """Images/s of one process doing what each actor does, file by file (model load included)."""
    from cocoseg.inference import Predictor, decode_image, detections_record

    start = time.perf_counter()
    predictor = Predictor.load(weights, conf=0.25)
    for uri in files:
        (det,) = predictor.predict([decode_image(Path(uri).read_bytes(), name=uri)], masks="rle")
        detections_record(det, predictor.class_names)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--actors", type=int, default=0, help="0: sized by the job ((CPUs - 1) / 1)")
    parser.add_argument("--chunk", type=int, default=32, help="evaluate.chunk_images")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    from cocoseg.cluster import start_ray
    from cocoseg.config import load_config
    from pipelines import infer

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        weights = _weights(Path(tmp) / "w", args.imgsz)
        files = _images(Path(tmp) / "in", args.images)
        start_ray(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        rss_before = _rss_mb("VmRSS")
        cfg = load_config(None, [f"evaluate.actors={args.actors}", "evaluate.batch_size=8",
                                 f"evaluate.chunk_images={args.chunk}"])
        doc = infer.run(cfg, weights, str(Path(tmp) / "in"), str(Path(tmp) / "out"))
        rss_peak = _rss_mb("VmHWM")
        job, run = doc["this_run"]["images_per_s"], doc["this_run"]
        steady = run["images"] / max(run["seconds"] - run["first_rows_s"], 1e-9)
        loop = single_process_loop(weights, files)
    load_after = os.getloadavg()
    print(f"\nbench_infer: {args.images} images (coco8-seg JPEGs), n variant at {args.imgsz} px, 1 torch thread "
          f"per model, {os.cpu_count()} CPUs")
    print(f"  job (pipelines.infer, {cfg.evaluate.actors or 'sized'} actor(s)): {job:.2f} img/s")
    print(f"    of which {run['first_rows_s']:.1f} s before the first rows (actor start, model load); "
          f"after that {steady:.2f} img/s")
    print(f"  single-process loop:                   {loop:.2f} img/s")
    print(f"  ratio job / loop:                      {job / loop:.2f}x (target >= 0.9x)")
    print(f"  driver RSS: {rss_before:.0f} MB before the job, peak {rss_peak:.0f} MB "
          f"(+{rss_peak - rss_before:.0f} MB for {doc['counts']['detections']} detections)")
    print(f"  load average (1, 5, 15 min): before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}")


if __name__ == "__main__":
    main()
