"""The register job: one export directory -> one MLflow Model Registry version, then the gate.

    register EXPORT_DIR [--name NAME] [--snapshot URI] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

from .args import Renamed, add_common, job_config

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run_from_args"]

HELP = "register an export as a new MLflow model version and run the gate"
DESCRIPTION = ("One registry version per export; alias challenger, and champion when the gate finds it better "
               "than the champion by registry.promotion_margin (docs/promotion.md).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="directory written by the export job")
    parser.add_argument("--name", default=None, help="registered model name (default registry.model_name)")
    parser.add_argument("--snapshot", default="", help="snapshot to evaluate the served artifacts on (default: the "
                        "one the export was evaluated or trained on, under storage.root)")
    parser.add_argument("--export", action=Renamed, new="EXPORT_DIR as the first positional argument")
    add_common(parser, example="registry.promotion_margin=0.005")


def run_from_args(args: argparse.Namespace) -> int:
    cfg = job_config(args)
    from cocoseg.registry.register import register

    result = register(cfg, args.export_dir, args.name, args.snapshot)
    print(json.dumps({"name": result.name, "version": result.version, "model_uri": result.model_uri,
                      "decision": result.decision.decision, "reason": result.decision.reason}, indent=2))
    return 0
