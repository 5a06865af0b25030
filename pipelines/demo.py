"""The whole pipeline on embedded defaults: synthesise -> ingest -> train -> export -> register.

    make demo                      # = python -m pipelines.demo --root .cocoseg
    python -m pipelines.demo --root /tmp/cocoseg-demo [key=value ...]

Everything is local: a private Ray started by the job, a local folder as object storage
(``--root``), MLflow on SQLite under the root (or ``$MLFLOW_TRACKING_URI`` when set). It writes a
small synthetic COCO-Seg dataset of coloured shapes to ``<root>/source``, ingests it into a
Parquet snapshot under ``<root>/snapshots``, trains the n variant for a few epochs at a small
image size, exports ONNX and registers the export as a model version (``champion`` on the first
run). A rerun re-uses the unchanged snapshot (the ingest is a no-op) and trains again.
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

from cocoseg.config import ConfigError, load_config, with_overrides, with_values
from cocoseg.engine.checks import ensure_ray
from cocoseg.utils import UserError, redact, set_verbose, verbose
from pipelines import config_path

DEMO_CONFIG = "pipelines/configs/demo.yaml"  # the small run that visibly learns in a few minutes


def run(root: str, overrides: Sequence[str] = (), images: int = 120, *, ui_port: int = 5000,
        serve_port: int = 5001) -> dict:
    """Run every stage; returns what each produced (snapshot, MLflow run, weights, export, version)
    and ``hints``, the commands to run next (printed at the end)."""
    from cocoseg.ingest.synthetic import write_synthetic_coco
    from pipelines import export, ingest, register, train

    started = time.monotonic()
    root = str(Path(root).resolve())
    source = os.path.join(root, "source")
    if not os.path.exists(os.path.join(source, "annotations")):
        print(f"[1/5] synthesising {images} images -> {source}", flush=True)
        write_synthetic_coco(source, images=images, size=(160, 128), seed=0)
    else:
        print(f"[1/5] synthetic source already at {source}", flush=True)
    cfg = with_values(load_config(config_path(DEMO_CONFIG)), {"storage.root": root, "ingest.source": source})
    cfg = with_overrides(cfg, overrides)
    ensure_ray(cfg.scaling, cfg.data, cfg.validation)  # sized for training; ingest alone would size a local Ray for itself
    print("[2/5] ingest (Ray Data) -> Parquet snapshot", flush=True)
    manifest = ingest.run(cfg)
    cfg = with_values(cfg, {"train.snapshot": manifest["snapshot_uri"]})
    print(f"[3/5] train yolov8{cfg.model.variant}-seg for {cfg.train.epochs} epochs at {cfg.model.imgsz} px "
          f"(Ray Train, {cfg.scaling.num_workers} worker)", flush=True)
    trained = train.run(cfg)
    export_dir = os.path.join(root, "exports", os.path.basename(trained.run_dir))
    print(f"[4/5] export ONNX -> {export_dir}", flush=True)
    export.run(cfg, trained.best_weights, export_dir, train_run_id=trained.mlflow_run_id)
    print(f"[5/5] register in the MLflow Model Registry as {cfg.registry.model_name!r}", flush=True)
    reg = register.run(cfg, export_dir)
    summary = {
        "snapshot": manifest["snapshot_uri"],
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
    print(redact("\n".join(["", f"demo finished in {time.monotonic() - started:.0f} s:",
                             *[f"  {k:18s} {v}" for k, v in summary.items() if k != "hints"],
                             "", "next:", *[f"  {k:15s} {v}" for k, v in summary["hints"].items()]])), flush=True)
    return summary


def next_steps(uri: str, name: str, weights: str, source: str, root: str, *, ui_port: int = 5000,
               serve_port: int = 5001) -> dict[str, str]:
    """Commands to run next, each complete as printed (absolute paths, the store named)."""
    bin_dir = os.path.dirname(sys.executable)  # the venv's bin (not resolved: it is a symlink)
    images = sorted(glob.glob(os.path.join(source, "val", "*.jpg")))
    store = f"MLFLOW_TRACKING_URI={uri}"
    model = f"models:/{name}@champion"
    # ?workflowType=machine_learning: MLflow 3.17's UI opens in its GenAI mode otherwise
    ui = (f"open {uri}/#/experiments?workflowType=machine_learning in a browser"
          if uri.startswith(("http://", "https://")) else
          f"{bin_dir}/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {ui_port}"
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

    version = alias_version(connect(tracking_uri), name, CHAMPION)
    if version is None:
        raise UserError(f"no '{CHAMPION}' alias on {name!r} after registration at {tracking_uri}")
    return str(version.version)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".cocoseg", help="local folder used as object storage")
    parser.add_argument("--images", type=int, default=120, help="synthetic images to generate")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and pycocotools' own output too")
    parser.add_argument("--ui-port", type=int, default=5000, help="port in the printed `mlflow ui` hint")
    parser.add_argument("--serve-port", type=int, default=5001, help="port in the printed serving hint")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides (train.epochs=2 ...)")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)
    if not verbose():  # the demo prints its own step lines and summary; the jobs' INFO logs are --verbose
        os.environ.setdefault("COCOSEG_LOG_LEVEL", "WARNING")  # for loggers configured from here on
        logging.getLogger("cocoseg").setLevel(logging.WARNING)
    try:
        run(args.root, args.overrides, args.images, ui_port=args.ui_port, serve_port=args.serve_port)
    except (ConfigError, UserError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
