"""CLI sub-commands for the composed jobs: retrain, demo.

``cocoseg retrain`` runs :func:`cocoseg.retrain.retrain` (the code of ``python -m pipelines.retrain``).
``cocoseg demo`` runs ``python -m pipelines.demo`` in a child process: the demo's code is a job under
``pipelines/``, which the library never imports (an import-linter contract).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    p = sub.add_parser("retrain", help="one retraining round: ingest, train, evaluate, export, register + gate",
                       description="Runs pipelines.retrain against the local Ray, or the cluster in RAY_ADDRESS: "
                                   "a new snapshot when the source changed, a training run warm-started from the "
                                   "champion, its evaluation, export and registration (champion only if it beats "
                                   "the current one). Nothing is trained when the source is unchanged and the "
                                   "champion saw this snapshot (retrain.force=true trains anyway).")
    p.add_argument("--config", default=None, help="job config YAML (e.g. pipelines/configs/retrain.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. ingest.source=s3://data/coco")
    p.set_defaults(func=_retrain)

    d = sub.add_parser("demo", help="the whole pipeline on synthetic data, locally (synth, ingest, train, export, register)",
                       description="Runs python -m pipelines.demo: a private Ray, a local folder as object "
                                   "storage, MLflow on SQLite under it; trains the n variant for a few epochs "
                                   "at a small image size. A rerun re-uses the unchanged snapshot.")
    d.add_argument("--root", default=".cocoseg", help="local folder used as object storage (default .cocoseg)")
    d.add_argument("--images", type=int, default=120, help="synthetic images to generate (default 120)")
    d.add_argument("--ui-port", type=int, default=5000, help="port in the printed `mlflow ui` hint")
    d.add_argument("--serve-port", type=int, default=5001, help="port in the printed serving hint")
    d.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=2")
    d.set_defaults(func=_demo)


def _retrain(args: argparse.Namespace) -> int:
    from cocoseg.config import config_path, load_config

    cfg = load_config(config_path(args.config), args.overrides)  # a bad key: one line before Ray loads
    from cocoseg.retrain import retrain

    result = retrain(cfg)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cocoseg.utils import verbose

    cmd = [sys.executable, "-m", "pipelines.demo", "--root", args.root, "--images", str(args.images),
           "--ui-port", str(args.ui_port), "--serve-port", str(args.serve_port), *(["--verbose"] if verbose() else []),
           *args.overrides]
    return subprocess.call(cmd)
