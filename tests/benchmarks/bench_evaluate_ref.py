"""``cocoseg evaluate`` with its default sizing against the reference's own validator, on the same
images and weights (issue 27, item 2: target >= 0.95x its images/s).

    PYTHONPATH=$PWD COCOSEG_REF_PYTHON=/work/.venv-ref/bin/python \\
        python tests/benchmarks/bench_evaluate_ref.py [--images 128] [--rounds 2]

- **images**: the 8 coco8-seg photos (``tests/fixtures/coco8-seg``) re-encoded at different JPEG
  qualities up to ``--images`` files in ``val`` (same labels: no geometry changes), a YOLO
  dataset YAML; ingested with ``cocoseg ingest``.
- **weights**: the reference-format checkpoint ``../shared/reference/yolov8n-seg-random.pt``
  (``$COCOSEG_SHARED``), imported with ``cocoseg import-weights`` for cocoseg; the reference
  reads the .pt itself.
- **cocoseg**: ``cocoseg evaluate W SNAPSHOT --no-mlflow`` with the defaults (a private local Ray;
  no evaluate.* override), its ``metrics.json`` ``seconds`` (actor start, model load, inference,
  COCOeval; not Ray's start-up) -> images / seconds.
- **reference**: ``YOLO(pt).val(data=yaml, imgsz=640, batch=16, device="cpu")`` in its own
  process and venv (``$COCOSEG_REF_PYTHON``), torch at the host's cores, timed around ``val``.

The two run one after the other, alternating for ``--rounds``; each figure comes with
``os.getloadavg()`` before and after. Prints the median images/s of each and their ratio.
``--also NAME=KEY=VALUE,...`` adds a cocoseg arm with overrides (e.g.
``1x2=evaluate.actors=1,evaluate.cpus_per_actor=2``: one actor of 2 threads); ``--shared-ray`` runs every job on one local Ray of the same CPUs
(a private Ray's start-up can time out on a host at load 60+); ``--dir`` keeps the work folder
and reuses it. Note: this checkpoint detects nothing on these photos (constant class logits
below conf 0.001), so the pair measures decode, letterbox, the forward and the job's start-up;
``--detecting BIAS`` raises class 0's logit by BIAS in a copy of it (written by the reference's
venv, read by both sides), so that both keep up to max_det detections per image and do the NMS,
mask, RLE and scoring work of a model that detects.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COCO8 = REPO / "tests" / "fixtures" / "coco8-seg"
SHARED = Path(os.environ.get("COCOSEG_SHARED", REPO.parent / "shared"))

_REF = """
import json, os, sys, time
os.environ["YOLO_OFFLINE"] = "1"
import torch
torch.set_num_threads(os.cpu_count() or 1)
from ultralytics import YOLO
model = YOLO(sys.argv[1])
start = time.perf_counter()
r = model.val(data=sys.argv[2], imgsz=640, batch=16, device="cpu", plots=False, verbose=False, workers=0)
print(json.dumps({"seconds": time.perf_counter() - start, "box_map": float(r.box.map), "mask_map": float(r.seg.map)}))
"""


# --detecting: the same checkpoint with class 0's logit raised by BIAS in every cell (the random one
# scores -8.67 everywhere, below conf 0.001), so both sides keep up to max_det detections per image
# and do the NMS, mask and scoring work a trained model makes them do. Run in the reference's venv
# (its pickle needs the reference's classes); the result is read by both sides.
_BIAS = """
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
for key in ("model", "ema"):
    model = ckpt.get(key)
    if model is None:
        continue
    for branch in model.model[-1].cv3:
        branch[-1].bias.data[0] += float(sys.argv[3])
torch.save(ckpt, sys.argv[2])
"""


_RAY_ADDRESS = ""  # --shared-ray: this process's local Ray, which every cocoseg job joins


def _start_shared_ray() -> str:
    """A local Ray shaped as ``cocoseg evaluate`` shapes its private one (the host's cores + 1 logical
    CPU for the reads, so the default pool is planned the same), started once for every job here:
    on a host so loaded that a private Ray's start-up times out, the jobs still run. It stops
    with this process."""
    from cocoseg.batch.sizing import EVALUATE_READ_CPUS, local_ray_kwargs
    from cocoseg.cluster import start_ray

    os.environ.pop("RAY_ADDRESS", None)
    kwargs = local_ray_kwargs(EVALUATE_READ_CPUS)
    start_ray(**kwargs)
    import ray

    return ray.get_runtime_context().gcs_address


def _dataset(root: Path, images: int) -> Path:
    from PIL import Image

    sources = sorted((COCO8 / "images").glob("*/*.jpg"))
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for i in range(images):
        src = sources[i % len(sources)]
        label = COCO8 / "labels" / src.parent.name / f"{src.stem}.txt"
        buf = io.BytesIO()
        Image.open(src).convert("RGB").save(buf, "JPEG", quality=95 - (i // len(sources)) % 40)
        name = f"{i:06d}"
        (root / "images" / "val" / f"{name}.jpg").write_bytes(buf.getvalue())
        shutil.copy(label, root / "labels" / "val" / f"{name}.txt")
        if i < len(sources):
            shutil.copy(src, root / "images" / "train" / f"{name}.jpg")
            shutil.copy(label, root / "labels" / "train" / f"{name}.txt")
    names = [line for line in (COCO8 / "coco8-seg.yaml").read_text().splitlines() if line.startswith("  ")]
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n" + "\n".join(names) + "\n")
    return yaml_path


def _cocoseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if _RAY_ADDRESS:
        env["RAY_ADDRESS"] = _RAY_ADDRESS
    out = subprocess.run([sys.executable, "-m", "cocoseg", *args], capture_output=True, text=True, cwd=cwd, env=env)
    if out.returncode:
        raise SystemExit(f"cocoseg {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default="", help="work folder to keep (and reuse on a rerun); default: a temporary one")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                        help="another cocoseg arm with these overrides, e.g. 2x1=evaluate.actors=2 (repeatable)")
    parser.add_argument("--detecting", type=float, default=0.0, metavar="BIAS",
                        help="raise class 0's logit by BIAS in the checkpoint (both sides), so it detects (e.g. 6)")
    parser.add_argument("--shared-ray", action="store_true",
                        help="one local Ray for all jobs (same CPUs as their private one) instead of one per job")
    args = parser.parse_args()
    if args.shared_ray:
        global _RAY_ADDRESS
        _RAY_ADDRESS = _start_shared_ray()
    arms = {"defaults": []}
    for spec in args.also:
        name, _, overrides = spec.partition("=")
        arms[name] = [o for o in overrides.split(",") if o]
    ref_python = os.environ.get("COCOSEG_REF_PYTHON", "/work/.venv-ref/bin/python")
    pt = SHARED / "reference" / "yolov8n-seg-random.pt"
    with tempfile.TemporaryDirectory(prefix="bench-eval-ref-") as tmp:
        tmp = Path(args.dir or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        data = tmp / "data" / "data.yaml"
        if args.detecting:
            biased = tmp / f"biased-{args.detecting:g}.pt"
            if not biased.exists():
                (tmp / "bias.py").write_text(_BIAS)
                subprocess.run([ref_python, str(tmp / "bias.py"), str(pt), str(biased), str(args.detecting)],
                               check=True, cwd=tmp, env={**os.environ, "YOLO_OFFLINE": "1"})
            pt = biased
        weights = tmp / f"w-{pt.stem}"
        if not (tmp / "data").exists():  # --dir of an earlier run: its images and snapshot as they are
            data = _dataset(tmp / "data", args.images)
            _cocoseg("ingest", str(data), str(tmp / "store"), cwd=tmp)
        if not weights.exists():
            _cocoseg("import-weights", str(pt), str(weights), cwd=tmp)
        snapshot = str(next((tmp / "store" / "snapshots").iterdir()))
        args.images = len(list((tmp / "data" / "images" / "val").glob("*.jpg")))
        (tmp / "ref.py").write_text(_REF)
        ours: dict[str, list[float]] = {name: [] for name in arms}
        theirs: list[float] = []
        for r in range(args.rounds):
            load0 = os.getloadavg()
            ref = subprocess.run([ref_python, str(tmp / "ref.py"), str(pt), str(data)], capture_output=True, text=True,
                                 cwd=tmp, env={**os.environ, "YOLO_OFFLINE": "1"})
            if ref.returncode:
                raise SystemExit(f"reference failed:\n{ref.stderr[-3000:]}")
            doc = json.loads(ref.stdout.strip().splitlines()[-1])
            theirs.append(args.images / doc["seconds"])
            print(f"{time.strftime('%H:%M')} round {r}: reference {theirs[-1]:.2f} img/s (mask mAP {doc['mask_map']:.4f}, "
                  f"box {doc['box_map']:.4f}; "
                  f"load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
            for name, overrides in arms.items():
                load0 = os.getloadavg()
                out = tmp / f"eval-{name}-{r}"
                run = _cocoseg("evaluate", str(weights), snapshot, *overrides, "--out", str(out), "--no-mlflow", cwd=tmp)
                pool = next((line.split("evaluate: ", 1)[1] for line in run.stderr.splitlines()
                             if "evaluate: " in line and "actor(s)" in line), "?")
                ev = json.loads((out / "metrics.json").read_text())
                ours[name].append(ev["images"] / ev["seconds"])
                print(f"{time.strftime('%H:%M')} round {r}: cocoseg {name} ({pool}) {ours[name][-1]:.2f} img/s = "
                      f"{ours[name][-1] / theirs[-1]:.2f}x ({ev['images']} images, {ev['detections']} detections, "
                      f"mask AP {ev['metrics']['val/mask_ap50_95']:.4f}; load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})",
                      flush=True)
        b = statistics.median(theirs)
        for name, rates in ours.items():
            a = statistics.median(rates)
            ratios = [x / y for x, y in zip(rates, theirs, strict=True)]
            print(f"cocoseg evaluate ({name}, {os.cpu_count()} cores) {a:.2f} img/s vs reference validator {b:.2f} "
                  f"img/s: {a / b:.3f}x of the medians, median of the per-round ratios "
                  f"{statistics.median(ratios):.3f}x (target >= 0.95x); {time.strftime('%Y-%m-%d %H:%M')} load "
                  f"{os.getloadavg()}")

if __name__ == "__main__":
    main()
