"""Quality from the same compute (issue 9, item 2). A plain script:

    python tests/benchmarks/bench_quality.py [--epochs 30] [--train-images 240] [--val-images 60]
    COCOSEG_REF_PYTHON=/work/.venv-ref/bin/python python tests/benchmarks/bench_quality.py

Trains the n model from scratch with cocoseg's DEFAULT recipe (only data, size, epochs, batch
and class count are set) on the project's synthetic shapes (``cocoseg.ingest.synthetic``,
``--train-images`` + ``--val-images`` images at ``--imgsz`` px, 4 classes) through the real job
path: ingest -> ``pipelines.train.run`` on a private local Ray, one CPU worker. Prints box and
mask AP50-95 / AP50 (pycocotools, EMA weights) and wall time, with the split between training
and validation.

When ``$COCOSEG_REF_PYTHON`` names a Python with ``ultralytics`` installed, the same images
are written in YOLO layout and the reference trains on them in a separate process with its
own defaults (``YOLO("yolov8n-seg.yaml")``, pretrained=False, same imgsz / batch / epochs,
workers 0, seed 0, deterministic, ``YOLO_OFFLINE=1``); the two runs are made one after the
other, never overlapping, with the load average at the start and end of each. Nothing of the
reference is imported here: it is driven through a small inline script in a subprocess.

Both sides are scored by the same code: pycocotools on the original-size val images, through
``cocoseg evaluate``. The reference's ``best.pt`` and ``last.pt`` are converted with ``cocoseg
import-weights`` (a restricted unpickler; nothing of the reference runs) and evaluated on the same
snapshot; cocoseg's selected checkpoint is evaluated by the same command too, which must agree
with its in-training validation. The reference's own validator is printed beside it but not used
for the ratio: it compares masks in the letterboxed frame against ground truth rasterised at 1/4
of the input and upsampled (its ``mask_ratio`` 4), which on small shapes reads several points of
mask AP higher than pycocotools does for the same weights (docs/quality.md).

Figures are "best" (the selected checkpoint: cocoseg's best epoch by val mask AP50-95, the
reference's best.pt) and "last" (the final epoch). ``--json PATH`` writes everything measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

NUM_CLASSES = 4

# The synthetic sets (``write_synthetic_coco`` keyword arguments). "easy" is the project's default
# shapes: large, one colour per class; both implementations saturate on it (mask AP50-95 ~0.93-0.95
# after 30 epochs, mask AP50 1.0), which leaves no room for a ratio. "hard" (the default) has up to
# 10 smaller shapes per image (radius 4-12 % of the side, 10-31 px at 256) in random colours, so
# only a shape's geometry tells its class.
SETS = {"easy": {}, "hard": {"max_instances": 10, "radius": (0.04, 0.12), "colour_by_class": False}}

# Run by $COCOSEG_REF_PYTHON: train with the reference's defaults, print one JSON result line.
REF_SCRIPT = r"""
import json, sys, time
from ultralytics import YOLO
a = json.loads(sys.argv[1])
model = YOLO("yolov8n-seg.yaml")
start = time.perf_counter()
metrics = model.train(data=a["data"], epochs=a["epochs"], imgsz=a["imgsz"], batch=a["batch"], workers=0,
                      seed=a["seed"], deterministic=True, pretrained=False, device="cpu",
                      project=a["project"], name=f"ref-s{a['seed']}", exist_ok=True)
seconds = time.perf_counter() - start
print("COCOSEG_REF_RESULT " + json.dumps({"seconds": seconds, "results": dict(metrics.results_dict),
                                          "save_dir": str(model.trainer.save_dir)}), flush=True)
"""


def load() -> dict:
    """Load average and the ``uptime`` line, for the record."""
    one, five, fifteen = os.getloadavg()
    return {"load1": one, "load5": five, "load15": fifteen, "time": time.strftime("%H:%M:%S")}


def write_dataset(root: Path, train_images: int, val_images: int, imgsz: int, which: str = "hard") -> Path:
    from cocoseg.ingest.synthetic import write_synthetic_coco

    total = train_images + val_images
    summary = write_synthetic_coco(str(root), images=total, size=(imgsz, imgsz), seed=0,
                                   val_fraction=val_images / total, **SETS[which])
    assert summary["splits"] == {"train": train_images, "val": val_images}, summary["splits"]
    return root


def write_yolo_layout(src: Path, dest: Path) -> Path:
    """The same JPEGs and polygons as ``images/<split>/`` + ``labels/<split>/`` + ``data.yaml``."""
    names = None
    for split in ("train", "val"):
        coco = json.loads((src / "annotations" / f"instances_{split}.json").read_text())
        names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        (dest / "images" / split).mkdir(parents=True, exist_ok=True)
        (dest / "labels" / split).mkdir(parents=True, exist_ok=True)
        anns: dict[int, list] = {}
        for a in coco["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        for img in coco["images"]:
            shutil.copyfile(src / split / img["file_name"], dest / "images" / split / img["file_name"])
            w, h = img["width"], img["height"]
            lines = []
            for a in anns.get(img["id"], []):
                poly = a["segmentation"][0]
                xy = " ".join(f"{v / (w if i % 2 == 0 else h):.6f}" for i, v in enumerate(poly))
                lines.append(f"{a['category_id'] - 1} {xy}")
            (dest / "labels" / split / (Path(img["file_name"]).stem + ".txt")).write_text("\n".join(lines) + "\n")
    yaml_lines = [f"path: {dest}", "train: images/train", "val: images/val", "names:"]
    yaml_lines += [f"  {i}: {n}" for i, n in enumerate(names or [])]
    (dest / "data.yaml").write_text("\n".join(yaml_lines) + "\n")
    return dest / "data.yaml"


def run_cocoseg(src: Path, root: Path, args: argparse.Namespace, seed: int) -> dict:
    """Ingest + the train job with default settings; per-epoch curve from the run's journal."""
    import ray

    from cocoseg import tracking
    from cocoseg.config import load_config, with_values
    from cocoseg.engine.checks import ensure_ray
    from pipelines import ingest, train

    overrides = [f"storage.root={root}", f"ingest.source={src}", f"model.num_classes={NUM_CLASSES}",
                 f"model.imgsz={args.imgsz}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}",
                 "scaling.num_workers=1", "scaling.use_gpu=false", f"train.seed={seed}",
                 f"tracking.run_name=bench-quality-s{seed}", *args.cocoseg_set]
    cfg = load_config(None, overrides)
    # Ray starts its workers at nice 15; the reference runs at 0. On a machine shared with other
    # work that alone would starve cocoseg's side, so its local Ray runs its workers at 0 too.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ensure_ray(cfg.scaling, cfg.data, cfg.validation)
    try:
        t0 = time.perf_counter()
        manifest = ingest.run(cfg).manifest
        ingest_s = time.perf_counter() - t0
        cfg = with_values(cfg, {"train.snapshot": manifest.snapshot_uri})
        start = load()
        t0 = time.perf_counter()
        result = train.run(cfg)
        seconds = time.perf_counter() - t0
        end = load()
    finally:
        ray.shutdown()
    scored = score(result.best_weights, manifest.snapshot_uri, root / f"eval-s{seed}")
    curve = [r["metrics"] for r in tracking.read_journal(tracking.journal_uri(result.run_dir))]
    params = _mlflow_params(result.tracking_uri, result.mlflow_run_id)
    best = max(curve, key=lambda m: m.get("val/mask_ap50_95", -1.0))
    pick = {k: [m.get(f"val/{k}", float("nan")) for m in (best, curve[-1])]
            for k in ("mask_ap50_95", "mask_ap50", "box_ap50_95", "box_ap50")}
    return {"seconds": seconds, "ingest_s": ingest_s, "load_start": start, "load_end": end,
            "train_s": sum(m.get("train/epoch_time_s", 0.0) for m in curve),
            "val_s": sum(m.get("val/time_s", 0.0) for m in curve),
            "best": {k: v[0] for k, v in pick.items()}, "last": {k: v[1] for k, v in pick.items()},
            "best_epoch": curve.index(best), "epochs": len(curve), "evaluate_best": scored,
            "snapshot_uri": manifest.snapshot_uri,
            "recipe": {k[len("recipe."):]: v for k, v in params.items() if k.startswith("recipe.")},
            "curve_mask_ap50_95": [round(m.get("val/mask_ap50_95", float("nan")), 4) for m in curve]}


def _cli(*args: str) -> None:
    """``python -m cocoseg ARGS`` from this checkout; its output is shown only when it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cocoseg", *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"cocoseg {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


def score(weights: str, snapshot_uri: str, out: Path) -> dict:
    """``cocoseg evaluate`` of a checkpoint on the val split: pycocotools box and mask AP."""
    _cli("evaluate", str(weights), snapshot_uri, "--no-mlflow", "--out", str(out))
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    return {k: float(m[f"val/{k}"]) for k in ("mask_ap50_95", "mask_ap50", "box_ap50_95", "box_ap50")}


def ingest_snapshot(src: Path, root: Path) -> str:
    """The val split's snapshot (for scoring the reference when cocoseg's side is skipped)."""
    _cli("ingest", str(src), str(root))
    manifests = sorted((root / "snapshots").glob("*/_manifest.json"), key=lambda p: p.stat().st_mtime)
    return str(manifests[-1].parent)


def _mlflow_params(uri: str, run_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(tracking_uri=uri).get_run(run_id).data.params)


def run_reference(python: str, data_yaml: Path, project: Path, args: argparse.Namespace, seed: int,
                  snapshot_uri: str) -> dict:
    """Train the reference in its own process; score its best.pt and last.pt with cocoseg's
    evaluator (pycocotools) on ``snapshot_uri``, and keep its own validator's figures beside."""
    payload = json.dumps({"data": str(data_yaml), "epochs": args.epochs, "imgsz": args.imgsz,
                          "batch": args.batch, "project": str(project), "seed": seed})
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(project / "cfg")}
    env.pop("PYTHONPATH", None)
    log_path = project / f"reference-s{seed}.log"
    project.mkdir(parents=True, exist_ok=True)
    start = load()
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.run([python, "-c", REF_SCRIPT, payload], cwd=project, env=env, stdout=log_file,
                              stderr=subprocess.STDOUT, text=True, check=False)
    seconds = time.perf_counter() - t0
    end = load()
    text = log_path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("COCOSEG_REF_RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"reference run failed (exit {proc.returncode}); see {log_path}")
    out = json.loads(lines[-1].split(" ", 1)[1])
    r = out["results"]
    own_best = {"mask_ap50_95": r["metrics/mAP50-95(M)"], "mask_ap50": r["metrics/mAP50(M)"],
                "box_ap50_95": r["metrics/mAP50-95(B)"], "box_ap50": r["metrics/mAP50(B)"]}
    rows = _results_csv(Path(out["save_dir"]) / "results.csv")
    own_last = {k: float(rows[-1][c]) for k, c in (("mask_ap50_95", "metrics/mAP50-95(M)"), ("mask_ap50", "metrics/mAP50(M)"),
                                                     ("box_ap50_95", "metrics/mAP50-95(B)"), ("box_ap50", "metrics/mAP50(B)"))}
    scored = {}
    for which in ("best", "last"):
        converted = project / f"ref-s{seed}-{which}-cocoseg"
        _cli("import-weights", str(Path(out["save_dir"]) / "weights" / f"{which}.pt"), str(converted))
        scored[which] = score(str(converted), snapshot_uri, converted / "eval-val")
    chosen = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in text.splitlines() if "optimizer:" in ln and "(lr=" in ln][-1:]
    return {"seconds": seconds, "process_s": out["seconds"], "load_start": start, "load_end": end,
            "best": scored["best"], "last": scored["last"], "own_best": own_best, "own_last": own_last,
            "epochs": len(rows), "optimizer_log": chosen[0] if chosen else "",
            "curve_mask_ap50_95": [round(float(r["metrics/mAP50-95(M)"]), 4) for r in rows]}


def _results_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def report(args: argparse.Namespace, ours: dict | None, ref: dict | None, seed: int) -> None:
    print(f"\nbench_quality: n-seg from scratch, synthetic shapes ({args.set}) {args.train_images} train / {args.val_images} val, "
          f"{args.imgsz} px, {NUM_CLASSES} classes, {args.epochs} epochs, batch {args.batch}, CPU, seed {seed}")
    sides = [(name, side) for name, side in (("cocoseg (defaults)", ours), ("reference", ref)) if side]
    print("(both scored by pycocotools through `cocoseg evaluate`; the reference's own validator below)")
    print(f"{'':28s}" + "".join(f"{name:>22s}" for name, _ in sides) + ("   ratio" if len(sides) == 2 else ""))
    for which in ("best", "last"):
        for key in ("mask_ap50_95", "mask_ap50", "box_ap50_95", "box_ap50"):
            vals = [side[which][key] for _, side in sides]
            ratio = f"   {vals[0] / vals[1]:.2f}x" if len(vals) == 2 and vals[1] > 0 else ""
            print(f"{which + ' ' + key:28s}" + "".join(f"{v:22.4f}" for v in vals) + ratio)
    secs = [side["seconds"] for _, side in sides]
    ratio = f"   {secs[0] / secs[1]:.2f}x" if len(secs) == 2 else ""
    print(f"{'wall time s':28s}" + "".join(f"{s:22.1f}" for s in secs) + ratio)
    for name, side in sides:
        ls, le = side["load_start"], side["load_end"]
        print(f"  {name}: load average {ls['load1']:.2f}/{ls['load5']:.2f}/{ls['load15']:.2f} at {ls['time']} -> "
              f"{le['load1']:.2f}/{le['load5']:.2f}/{le['load15']:.2f} at {le['time']}")
    if ours:
        print(f"  cocoseg: {ours['recipe'].get('name')} lr0 {ours['recipe'].get('lr0')} "
              f"({ours['recipe'].get('reason')}); train loops {ours['train_s']:.0f} s + validation {ours['val_s']:.0f} s "
              f"of {ours['seconds']:.0f} s (ingest {ours['ingest_s']:.0f} s not counted); best epoch {ours['best_epoch']}")
        e = ours["evaluate_best"]
        print(f"  cocoseg: `cocoseg evaluate` of the selected checkpoint: mask {e['mask_ap50_95']:.4f}, box "
              f"{e['box_ap50_95']:.4f} (the in-training validation: {ours['best']['mask_ap50_95']:.4f}, "
              f"{ours['best']['box_ap50_95']:.4f})")
    if ref:
        print(f"  reference: {ref['optimizer_log']}")
        o = ref["own_best"]
        print(f"  reference's own validator on its best.pt (mask_ratio 4 ground truth, letterboxed frame): "
              f"mask AP50-95 {o['mask_ap50_95']:.4f}, AP50 {o['mask_ap50']:.4f}; box AP50-95 {o['box_ap50_95']:.4f}")


def summary(runs: list[dict]) -> None:
    """Across seeds: each side's mean (min-max) of the best checkpoint's APs and of the wall time,
    and the ratio of the means (cocoseg / reference)."""
    both = [r for r in runs if r["cocoseg"] and r["reference"]]
    if len(runs) < 2 or not both:
        return
    print(f"\nacross seeds {[r['seed'] for r in both]} (best checkpoint; mean, min-max):")
    for key in ("mask_ap50_95", "mask_ap50", "box_ap50_95", "box_ap50", "seconds"):
        cells, means = [], []
        for side in ("cocoseg", "reference"):
            vals = [r[side]["seconds"] if key == "seconds" else r[side]["best"][key] for r in both]
            means.append(sum(vals) / len(vals))
            cells.append(f"{means[-1]:10.4f} ({min(vals):.4f}-{max(vals):.4f})")
        pairs = [(r["cocoseg"]["seconds"], r["reference"]["seconds"]) if key == "seconds"
                 else (r["cocoseg"]["best"][key], r["reference"]["best"][key]) for r in both]
        per_seed = ", ".join(f"{a / b:.2f}" if b > 0 else "-" for a, b in pairs)
        ratio = f"{means[0] / means[1]:.3f}x" if means[1] > 0 else "-"
        print(f"  {key:14s} cocoseg {cells[0]}   reference {cells[1]}   ratio of means {ratio}   per seed {per_seed}")
    own = [r["reference"]["own_best"]["mask_ap50_95"] for r in both if "own_best" in r["reference"]]
    if own:
        print(f"  (the reference's own validator: mask_ap50_95 {sum(own) / len(own):.4f} ({min(own):.4f}-{max(own):.4f}); "
              f"cocoseg / that {sum(r['cocoseg']['best']['mask_ap50_95'] for r in both) / len(both) / (sum(own) / len(own)):.3f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=240)
    parser.add_argument("--val-images", type=int, default=60)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--set", choices=sorted(SETS), default="hard", help="which synthetic set (see SETS)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds; each seed trains both sides")
    parser.add_argument("--cocoseg-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for cocoseg's side (experiments; the benchmark sets none)")
    parser.add_argument("--skip-cocoseg", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--workdir", default="", help="keep data and runs here (default: a temporary folder)")
    parser.add_argument("--json", default="", help="write all figures to this file")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    ref_python = "" if args.skip_reference else os.environ.get("COCOSEG_REF_PYTHON", "")
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = Path(args.workdir or tmp)
        src = write_dataset(work / "source", args.train_images, args.val_images, args.imgsz, args.set)
        data_yaml = write_yolo_layout(src, work / "yolo") if ref_python else None
        runs: list[dict] = []

        def save() -> None:  # after each side: a long run interrupted later keeps what it measured
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))

        for seed in seeds:  # per seed: cocoseg, then the reference; never overlapping
            run = {"seed": seed, "cocoseg": None, "reference": None}
            runs.append(run)
            if not args.skip_cocoseg:
                run["cocoseg"] = run_cocoseg(src, work / "cocoseg", args, seed)
                save()
                report(args, run["cocoseg"], None, seed)
            if ref_python:
                snapshot = (run["cocoseg"] or {}).get("snapshot_uri") or ingest_snapshot(src, work / "cocoseg")
                run["reference"] = run_reference(ref_python, data_yaml, work / "reference", args, seed, snapshot)
                save()
            report(args, run["cocoseg"], run["reference"], seed)
        summary(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
