"""The export job: a trained checkpoint -> a verified export directory (ONNX, TensorRT, latency).

    export WEIGHTS --out DIR [--formats onnx,engine] [--metrics FILE] [--snapshot URI] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

from .args import Renamed, add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "export a checkpoint to ONNX (+ TensorRT engine) with a parity check"
DESCRIPTION = ("Write OUT/ with model.onnx (parity-checked against the eager model), model.engine where TensorRT "
               "and a GPU exist, the weights, model card, metrics, config and export.json (written last).")
FORMATS = ("onnx", "onnx-int8", "engine")


def _formats(text: str) -> list[str]:
    items = [f.strip() for f in text.split(",") if f.strip()]
    if not items or any(f not in FORMATS for f in items):
        raise argparse.ArgumentTypeError(f"--formats takes onnx, onnx-int8 and/or engine, comma-separated; got {text!r}")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="WEIGHTS",
                        help="checkpoint folder (model.safetensors + model_card.json), local or s3://")
    parser.add_argument("--out", required=True, help="export directory (local or s3://)")
    parser.add_argument("--formats", type=_formats, default=None, help="onnx[,onnx-int8][,engine] (default export.formats)")
    parser.add_argument("--snapshot", default="", help="snapshot whose train split calibrates onnx-int8 "
                        "(default train.snapshot, else the card's under storage.root)")
    parser.add_argument("--metrics", default=None, help="evaluation metrics JSON (default WEIGHTS/metrics.json)")
    parser.add_argument("--train-run-id", default="", help="MLflow run id that trained WEIGHTS (a version tag)")
    parser.add_argument("--weights", action=Renamed, new="WEIGHTS as the first positional argument")
    add_common(parser, example="export.imgsz=320")


def run_from_args(args: argparse.Namespace) -> int:
    formats = [f"export.formats=[{','.join(args.formats)}]"] if args.formats else []
    cfg = job_config(args, then=formats)
    from cocoseg.export.job import export_checkpoint

    manifest = export_checkpoint(cfg, args.weights, args.out, args.metrics, args.train_run_id, snapshot=args.snapshot)
    print(json.dumps({"out": args.out, "files": sorted(manifest["files"]), "engine_built": manifest["engine_built"]},
                     indent=2))
    return 0
