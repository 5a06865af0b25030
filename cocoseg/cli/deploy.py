"""CLI sub-commands: export, register, promote, rollback."""

from __future__ import annotations

import argparse
import json

from cocoseg.config import config_path, load_config


def _formats(text: str) -> list[str]:
    items = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in items if f not in ("onnx", "onnx-int8", "engine")]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"--formats takes onnx, onnx-int8 and/or engine, comma-separated; got {text!r}")
    return items


def _export(args: argparse.Namespace) -> int:
    from cocoseg.export.job import export_checkpoint

    overrides = list(args.overrides)
    if args.formats:
        overrides.append(f"export.formats=[{','.join(args.formats)}]")
    manifest = export_checkpoint(load_config(config_path(args.config), overrides), args.weights, args.out, args.metrics,
                       args.train_run_id, snapshot=args.snapshot)
    print(json.dumps({"out": args.out, "files": sorted(manifest["files"]),
                      "engine_built": manifest["engine_built"]}, indent=2))
    return 0


def _register(args: argparse.Namespace) -> int:
    from cocoseg.registry.register import register

    result = register(load_config(config_path(args.config), args.overrides), args.export_dir, args.name, args.snapshot)
    print(json.dumps({"name": result.name, "version": result.version, "model_uri": result.model_uri,
                      "decision": result.decision.decision, "reason": result.decision.reason}, indent=2))
    return 0


def _client(args: argparse.Namespace):
    from cocoseg.registry import connect
    from cocoseg.tracking import resolve_tracking_uri

    cfg = load_config(config_path(args.config), args.overrides)
    return connect(resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root))


def _promote(args: argparse.Namespace) -> int:
    from cocoseg.registry import promote

    previous = promote(_client(args), args.name, args.version, reason=args.reason)
    print(f"{args.name}@champion -> v{args.version} (was {'v' + previous if previous else 'unset'})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from cocoseg.registry import rollback

    old, new = rollback(_client(args), args.name)
    print(f"{args.name}@champion -> v{new} (rolled back from v{old})")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="job config YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tracking.tracking_uri=...")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    p = sub.add_parser("export", help="export a checkpoint to ONNX (+ TensorRT engine) with a parity check",
                       description="Write OUT/ with model.onnx (parity-checked against the eager model), "
                                   "model.engine where TensorRT and a GPU exist, the weights, model card, "
                                   "metrics, config and export.json (written last).")
    p.add_argument("weights", help="checkpoint folder (model.safetensors + model_card.json), local or s3://")
    p.add_argument("--out", required=True, help="export directory (local or s3://)")
    p.add_argument("--formats", type=_formats, default=None,
                   help="onnx[,onnx-int8][,engine] (default export.formats)")
    p.add_argument("--snapshot", default="", help="snapshot whose train split calibrates onnx-int8 "
                   "(default train.snapshot, else the card's under storage.root)")
    p.add_argument("--metrics", default=None, help="evaluation metrics JSON (default WEIGHTS/metrics.json)")
    p.add_argument("--train-run-id", default="", help="MLflow run id that trained WEIGHTS (a version tag)")
    _common(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("register", help="register an export as a new MLflow model version and run the gate",
                       description="One registry version per export; alias challenger, and champion when "
                                   "its gate metric beats the champion's by registry.promotion_margin.")
    p.add_argument("export_dir", help="directory written by `cocoseg export`")
    p.add_argument("--name", default=None, help="registered model name (default registry.model_name)")
    p.add_argument("--snapshot", default="", help="snapshot to evaluate the served artifacts on (default: the "
                   "one the export was evaluated or trained on, under storage.root)")
    _common(p)
    p.set_defaults(func=_register)

    p = sub.add_parser("promote", help="make VERSION the champion by hand (no gate)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--reason", default="", help="recorded in the gate.reason tag; required to override "
                   "the per-class guard's refusal")
    _common(p)
    p.set_defaults(func=_promote)

    p = sub.add_parser("rollback", help="point champion back at the version it replaced")
    p.add_argument("name")
    _common(p)
    p.set_defaults(func=_rollback)
