"""The demo job: the whole pipeline on embedded defaults, locally: synthesise -> ingest -> train ->
export -> register (see ``pipelines/demo.py`` for what it writes where).

    demo [--root DIR] [--images N] [--ui-port P] [--serve-port P] [key=value ...]
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .args import add_common

__all__ = ["DEMO_CONFIG", "DESCRIPTION", "HELP", "add_arguments", "champion_version", "next_steps", "run",
           "run_from_args"]

DEMO_CONFIG = "pipelines/configs/demo.yaml"  # the small run that visibly learns in a few minutes
HELP = "the whole pipeline on synthetic data, locally (synth, ingest, train, export, register)"
DESCRIPTION = ("A private Ray, a local folder as object storage, MLflow on SQLite under it; trains the n variant "
               "for a few epochs at a small image size. A rerun re-uses the unchanged snapshot.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".cocoseg", help="local folder used as object storage (default .cocoseg)")
    parser.add_argument("--images", type=int, default=120, help="synthetic images to generate (default 120)")
    parser.add_argument("--ui-port", type=int, default=5000, help="port in the printed `mlflow ui` hint")
    parser.add_argument("--serve-port", type=int, default=5001, help="port in the printed serving hint")
    add_common(parser, config=False, example="train.epochs=2")


def run_from_args(args: argparse.Namespace) -> int:
    from cocoseg.utils import verbose

    if not verbose():  # the demo prints its own step lines and summary; the jobs' INFO logs are --verbose
        os.environ.setdefault("COCOSEG_LOG_LEVEL", "WARNING")  # for loggers configured from here on
        logging.getLogger("cocoseg").setLevel(logging.WARNING)
    run(args.root, args.overrides, args.images, ui_port=args.ui_port, serve_port=args.serve_port)
    return 0


def run(root: str, overrides: Sequence[str] = (), images: int = 120, *, ui_port: int = 5000,
        serve_port: int = 5001) -> dict:
    """Run every stage; returns what each produced (snapshot, MLflow run, weights, export, version)
    and ``hints``, the commands to run next (printed at the end)."""
    from cocoseg.config import config_path, load_config, with_overrides, with_values
    from cocoseg.engine.checks import ensure_ray
    from cocoseg.engine.trainer import train
    from cocoseg.export.job import export_checkpoint
    from cocoseg.ingest.job import ingest
    from cocoseg.ingest.synthetic import write_synthetic_coco
    from cocoseg.registry.register import register

    started = time.monotonic()
    root = str(Path(root).resolve())
    source = os.path.join(root, "source")
    cfg = with_values(load_config(config_path(DEMO_CONFIG)), {"storage.root": root, "ingest.source": source})
    cfg = with_overrides(cfg, overrides)  # a bad key: one line before anything is written
    if not os.path.exists(os.path.join(source, "annotations")):
        print(f"[1/5] synthesising {images} images -> {source}", flush=True)
        write_synthetic_coco(source, images=images, size=(160, 128), seed=0)
    else:
        print(f"[1/5] synthetic source already at {source}", flush=True)
    ensure_ray(cfg.scaling, cfg.data, cfg.validation)  # sized for training; ingest alone would size a local Ray for itself
    print("[2/5] ingest (Ray Data) -> Parquet snapshot", flush=True)
    manifest = ingest(cfg).manifest
    cfg = with_values(cfg, {"train.snapshot": manifest.snapshot_uri})
    print(f"[3/5] train yolov8{cfg.model.variant}-seg for {cfg.train.epochs} epochs at {cfg.model.imgsz} px "
          f"(Ray Train, {cfg.scaling.num_workers} worker)", flush=True)
    trained = train(cfg)
    export_dir = os.path.join(root, "exports", os.path.basename(trained.run_dir))
    print(f"[4/5] export ONNX -> {export_dir}", flush=True)
    export_checkpoint(cfg, trained.best_weights, export_dir, train_run_id=trained.mlflow_run_id)
    print(f"[5/5] register in the MLflow Model Registry as {cfg.registry.model_name!r}", flush=True)
    reg = register(cfg, export_dir)
    summary = {
        "snapshot": manifest.snapshot_uri,
        "mlflow_run_id": trained.mlflow_run_id,
        "tracking_uri": trained.tracking_uri,
        "best_weights": trained.best_weights,
        "val_mask_ap50": trained.metrics.get("val/mask_ap50"),
        "val_mask_ap50_95": trained.metrics.get("val/mask_ap50_95"),
        "export_dir": export_dir,
        "model": f"{reg.name} v{reg.version}",
        "gate": f"{reg.decision.decision}: {reg.decision.reason}",
    }
    summary["champion"] = f"{reg.name} v{champion_version(trained.tracking_uri, reg.name)}"
    summary["hints"] = next_steps(trained.tracking_uri, reg.name, trained.best_weights, source, root,
                                  ui_port=ui_port, serve_port=serve_port)
    _print_summary(summary, time.monotonic() - started)
    return summary


def _print_summary(summary: dict, seconds: float) -> None:
    from cocoseg.utils import redact

    print(redact("\n".join(["", f"demo finished in {seconds:.0f} s:",
                             *[f"  {k:18s} {v}" for k, v in summary.items() if k != "hints"],
                             "", "next:", *[f"  {k:15s} {v}" for k, v in summary["hints"].items()]])), flush=True)


def next_steps(uri: str, name: str, weights: str, source: str, root: str, *, ui_port: int = 5000,
               serve_port: int = 5001) -> dict[str, str]:
    """Commands to run next, each complete as printed (absolute paths, the store named)."""
    bin_dir = os.path.dirname(sys.executable)  # the venv's bin (not resolved: it is a symlink)
    images = sorted(glob.glob(os.path.join(source, "val", "*.jpg")))
    store = f"MLFLOW_TRACKING_URI={uri}"
    model = f"models:/{name}@champion"
    # ?workflowType=machine_learning: MLflow 3.17's UI opens in its GenAI mode otherwise; one worker
    # for one person (the default starts 4 worker processes, ~5 CPU-seconds each to start) and none of
    # the job runners of MLflow's GenAI features (3 more processes, ~6 CPU-seconds each)
    ui = (f"open {uri}/#/experiments?workflowType=machine_learning in a browser"
          if uri.startswith(("http://", "https://")) else
          f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {bin_dir}/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 "
          f"--port {ui_port} --workers 1"
          f"   # then open http://127.0.0.1:{ui_port}/#/experiments?workflowType=machine_learning")
    return {
        "MLflow UI": ui,
        "predict": f"{bin_dir}/cocoseg predict {weights} {images[0] if images else source} "
                   f"--out {os.path.join(root, 'predictions')}",
        "load champion": f"{store} {bin_dir}/python -c \"import mlflow; "
                         f"print('loaded', mlflow.pyfunc.load_model('{model}').metadata.model_uuid)\"",
        "serve champion": f"PATH={bin_dir}:$PATH {store} mlflow models serve -m {model} --env-manager local "
                          f"--host 127.0.0.1 --port {serve_port}",
    }


def champion_version(tracking_uri: str, name: str) -> str:
    """The version behind ``name@champion``; the demo is not done unless there is one."""
    from cocoseg.registry import CHAMPION, alias_version, connect
    from cocoseg.utils import UserError

    version = alias_version(connect(tracking_uri), name, CHAMPION)
    if version is None:
        raise UserError(f"no '{CHAMPION}' alias on {name!r} after registration at {tracking_uri}")
    return str(version.version)
