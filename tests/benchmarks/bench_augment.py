"""Input-stage CPU cost per image, cocoseg against the reference, side by side (issue 21, item 1).

Decode + train-time augmentation + formatting of one stored image into one training sample at
``--imgsz`` (640), one core: cocoseg's :class:`cocoseg.data.stage.AugmentBatch` on chunks of 16
snapshot rows (what an input actor runs), against the reference's dataset class at its defaults
(``build_yolo_dataset`` from ``get_cfg(overrides={"imgsz": 640, "task": "segment"})``; indexing it
runs decode + augmentation + formatting of one sample), run in its own venv as a separate process
named by ``$COCOSEG_REF_PYTHON`` (its code is never imported here; ../shared/docs/
reference-baseline-notes.md, "Timing its input side"). Presets: ``yolov8`` (mosaic; the
reference's mosaic 1.0), ``yolov8-close`` (its ``mosaic=0.0``), ``val`` (its ``mode="val"``).

One thread everywhere (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``,
``cv2.setNumThreads(0)``), process CPU time (``time.process_time``), which a loaded host inflates
only through caches and frequency. Rounds alternate the two sides (reference, then cocoseg, for
each set and preset) after one warm-up pass of each; the figure is the median over rounds.

Images, both sides the same files and polygons (crowd regions left out):

- ``coco8``: the 8 real COCO photos of ../shared/data/coco8-seg, repeated ``--coco8-repeat``
  times under distinct ids (distinct files for the reference);
- ``synthetic``: ``--synthetic`` COCO-shaped images at COCO's image sizes
  (:func:`cocoseg.ingest.synthetic.write_coco_like`, ~7 instances, JPEG quality 90).

Usage::

    COCOSEG_REF_PYTHON=/work/.venv-ref/bin/python PYTHONPATH=$PWD \\
        .venv/bin/python tests/benchmarks/bench_augment.py [--rounds 3] [--synthetic 128] [--json out.json]

Prints one table: cocoseg CPU ms/img, the reference's, and cocoseg / reference (targets: <= 0.5
for ``yolov8``, <= 0.7 for the other two), per set and over both sets, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
COCO8 = REPO.parent / "shared" / "data" / "coco8-seg"
if not COCO8.exists():
    COCO8 = REPO / "tests" / "fixtures" / "coco8-seg"
PRESETS = ("yolov8", "yolov8-close", "val")
TARGETS = {"yolov8": 0.5, "yolov8-close": 0.7, "val": 0.7}
CHUNK = 16  # data.batch_rows: rows per input-actor call, the mosaic partner pool

# Runs inside the reference's venv: one dataset per (set, preset), one warm-up pass, then one
# timed pass over all images per request line ({"set", "preset"} -> {"cpu_ms_per_image"}).
REF_RUNNER = r'''
import json, os, sys, time
os.environ["YOLO_OFFLINE"] = "1"
import cv2, torch
cv2.setNumThreads(0)
torch.set_num_threads(1)
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_yolo_dataset

config = json.loads(open(sys.argv[1]).read())
data = {"names": {i: str(i) for i in range(80)}, "nc": 80, "channels": 3}
built = {}


def dataset(name, preset):
    key = (name, preset)
    if key not in built:
        overrides = {"imgsz": config["imgsz"], "task": "segment"}
        if preset == "yolov8-close":
            overrides["mosaic"] = 0.0
        cfg = get_cfg(overrides=overrides)
        mode = "val" if preset == "val" else "train"
        ds = build_yolo_dataset(cfg, config["sets"][name], 16, data, mode=mode, rect=False, stride=32)
        for i in range(len(ds)):  # warm-up
            ds[i]
        built[key] = ds
    return built[key]


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    ds = dataset(req["set"], req["preset"])
    c0 = time.process_time()
    for i in range(len(ds)):
        ds[i]
    cpu = time.process_time() - c0
    print(json.dumps({"cpu_ms_per_image": 1000 * cpu / len(ds), "images": len(ds)}), flush=True)
'''


def _coco_rows(ann_file: Path, image_dir: Path) -> list[tuple[dict, bytes, list[dict]]]:
    """(image record, JPEG bytes, snapshot annotations) of a COCO JSON; crowd regions left out."""
    from cocoseg.structures import COCO91_TO_COCO80

    coco = json.loads(ann_file.read_text())
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        if isinstance(a.get("segmentation"), list) and not a.get("iscrowd"):
            anns.setdefault(a["image_id"], []).append(
                {"id": a["id"], "category": COCO91_TO_COCO80[a["category_id"]], "category_id": a["category_id"],
                 "bbox_xywh": a["bbox"], "area": a["area"], "iscrowd": False, "polygons": a["segmentation"],
                 "rle_counts": None})
    return [(img, (image_dir / img["file_name"]).read_bytes(), anns.get(img["id"], [])) for img in coco["images"]]


def _write_set(name: str, items: list[tuple[dict, bytes, list[dict]]], root: Path) -> tuple[list[dict], str]:
    """Snapshot rows for cocoseg, and a YOLO-layout folder (images/, labels/) for the reference."""
    images, labels = root / name / "images", root / name / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rows = []
    for k, (img, data, anns) in enumerate(items):
        stem = f"{k + 1:012d}"
        (images / f"{stem}.jpg").write_bytes(data)
        w, h = img["width"], img["height"]
        lines = []
        for a in anns:  # parts of a multi-polygon instance joined into one line, as its converter does
            flat = [v for poly in a["polygons"] for v in poly]
            coords = " ".join(f"{(v / (w if i % 2 == 0 else h)):.6f}" for i, v in enumerate(flat))
            lines.append(f"{a['category']} {coords}")
        (labels / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        rows.append({"image_id": k + 1, "width": w, "height": h, "image": data, "annotations": anns})
    return rows, str(images)


def _cocoseg_round(rows: list[dict], preset: str, imgsz: int) -> float:
    from cocoseg.data.stage import AugmentBatch

    stage = AugmentBatch(preset=preset, imgsz=imgsz, seed=0, epoch=0, num_classes=80)
    c0 = time.process_time()
    for start in range(0, len(rows), CHUNK):
        stage(rows[start:start + CHUNK])
    return 1000 * (time.process_time() - c0) / len(rows)


def _decode_round(rows: list[dict]) -> float:
    """CPU ms per image of the decode alone (full size), the part of the cost that does not scale
    with the output size (``cocoseg.engine.capacity.DECODE_MS_PER_IMAGE``)."""
    from cocoseg.data.decode import decode_rgb

    c0 = time.process_time()
    for row in rows:
        decode_rgb(row["image"])
    return 1000 * (time.process_time() - c0) / len(rows)


class _Reference:
    """The reference's dataset class in its own venv and process, driven over stdin/stdout."""

    def __init__(self, python: str, config: Path):
        script = config.with_name("ref_runner.py")
        script.write_text(REF_RUNNER)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1", "PYTHONPATH": ""}
        self.proc = subprocess.Popen([python, str(script), str(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(config.parent))
        self._read()

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the reference runner exited (code {self.proc.wait()}); see its stderr above")
            if line.startswith("{"):
                return json.loads(line)

    def round(self, name: str, preset: str) -> float:
        self.proc.stdin.write(json.dumps({"set": name, "preset": preset}) + "\n")
        self.proc.stdin.flush()
        return float(self._read()["cpu_ms_per_image"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _table(result: dict[str, Any]) -> str:
    lines = ["| set | preset | images | cocoseg CPU ms/img | reference CPU ms/img | cocoseg / reference | target | "
             "load avg (1 min) |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        ok = "met" if row["ratio"] <= TARGETS[row["preset"]] else "no reference" if row["ratio"] != row["ratio"] \
            else "NOT met"
        lines.append(f"| {row['set']} | `{row['preset']}` | {row['images']} | {row['cocoseg_ms']:.2f} | "
                     f"{row['reference_ms']:.2f} | **{row['ratio']:.2f}x** | <= {TARGETS[row['preset']]}x ({ok}) | "
                     f"{row['load'][0]:.1f} -> {row['load'][1]:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synthetic", type=int, default=128, help="COCO-shaped synthetic images (0: none)")
    parser.add_argument("--coco8-repeat", type=int, default=8, help="copies of the 8 coco8-seg photos (0: none)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    python = os.environ.get("COCOSEG_REF_PYTHON", "")
    if not python or not Path(python).exists():  # cocoseg's column alone (what the capacity model takes)
        print("COCOSEG_REF_PYTHON is not set to the reference venv's python: measuring cocoseg alone, no ratio",
              file=sys.stderr)
        python = ""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    presets = [p for p in args.presets.split(",") if p]
    root = Path(tempfile.mkdtemp(prefix="bench-augment-", dir="/tmp"))
    try:
        sets: dict[str, list[dict]] = {}
        folders: dict[str, str] = {}
        if args.coco8_repeat:
            items = [it for split in ("train", "val") for it in
                     _coco_rows(COCO8 / "annotations" / f"instances_{split}.json", COCO8 / "images" / split)]
            sets["coco8"], folders["coco8"] = _write_set("coco8", items * args.coco8_repeat, root)
        if args.synthetic:
            from cocoseg.ingest.synthetic import write_coco_like

            write_coco_like(str(root / "coco-like"), args.synthetic, 1, seed=1)
            items = _coco_rows(root / "coco-like" / "annotations" / "instances_train.json", root / "coco-like" / "train")
            sets["synthetic"], folders["synthetic"] = _write_set("synthetic", items, root)
        config = root / "config.json"
        config.write_text(json.dumps({"imgsz": args.imgsz, "sets": folders}))
        ref = _Reference(python, config) if python else None
        times: dict[tuple[str, str], dict[str, list]] = {}
        for r in range(args.rounds + 1):  # round 0: warm-up of both sides, not counted
            for name, rows in sets.items():
                for preset in presets:
                    load0 = os.getloadavg()[0]
                    ref_ms = ref.round(name, preset) if ref else float("nan")
                    ours = _cocoseg_round(rows, preset, args.imgsz)
                    if r == 0:
                        continue
                    t = times.setdefault((name, preset), {"ref": [], "ours": [], "load": []})
                    t["ref"].append(ref_ms)
                    t["ours"].append(ours)
                    t["load"] += [load0, os.getloadavg()[0]]
                    print(f"round {r} {name:9s} {preset:12s} cocoseg {ours:6.2f}  reference {ref_ms:6.2f} CPU ms/img  "
                          f"ratio {ours / ref_ms:.2f}  load {load0:.1f}", flush=True)
        if ref:
            ref.close()
        result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds,
                                  "imgsz": args.imgsz, "rows": [],
                                  "decode_ms": {n: statistics.median(_decode_round(r) for _ in range(3))
                                                for n, r in sets.items()}}
        for preset in presets:
            for name in [*sets, "all"]:
                keys = [(n, preset) for n in sets] if name == "all" else [(name, preset)]
                if name == "all" and len(sets) < 2:
                    continue
                n_img = sum(len(sets[k[0]]) for k in keys)
                # per set: median over rounds; "all": image-weighted mean of the sets' medians
                ours = sum(statistics.median(times[k]["ours"]) * len(sets[k[0]]) for k in keys) / n_img
                refm = sum(statistics.median(times[k]["ref"]) * len(sets[k[0]]) for k in keys) / n_img
                loads = [v for k in keys for v in times[k]["load"]]
                result["rows"].append({"set": name, "preset": preset, "images": n_img, "cocoseg_ms": ours,
                                       "reference_ms": refm, "ratio": ours / refm, "load": (min(loads), max(loads))})
        print()
        print(_table(result))
        print("decode only (cocoseg, full size): " + ", ".join(f"{n} {v:.2f} CPU ms/img"
                                                               for n, v in result["decode_ms"].items()))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
