"""CLI sub-commands: model-info, import-weights, predict.

    cocoseg model-info n [--num-classes 80] [--imgsz 640] [--json]
    cocoseg import-weights yolov8n-seg.pt ./weights/yolov8n-seg   (DEST may be s3://...)

Heavy imports (torch) happen inside the handlers so ``cocoseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    info = sub.add_parser("model-info", help="parameter count and GFLOPs of a YOLOv8-seg variant")
    info.add_argument("variant", help="n, s, m, l or x")
    info.add_argument("--num-classes", type=int, default=80)
    info.add_argument("--imgsz", type=int, default=640, help="square input side in pixels (multiple of 32)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(func=_model_info)

    imp = sub.add_parser("import-weights",
                         help="convert a reference YOLOv8-seg .pt into a cocoseg checkpoint (no pickle code runs)")
    imp.add_argument("src", help="reference checkpoint (.pt), local path or s3:// URI")
    imp.add_argument("dest", help="checkpoint folder to write (model.safetensors + model_card.json)")
    imp.set_defaults(func=_import_weights)

    _register_predict(sub)


def _model_info(args: argparse.Namespace) -> int:
    from cocoseg.model import ModelError, model_info

    if args.imgsz < 32 or args.imgsz % 32:
        raise ModelError(f"--imgsz must be a positive multiple of 32, got {args.imgsz}")
    info = model_info(args.variant, args.num_classes, args.imgsz)
    if args.json:
        print(json.dumps(info.as_dict()))
        return 0
    print(f"yolov8{info.variant}-seg  classes={info.num_classes}  imgsz={info.imgsz}\n"
          f"  parameters        {info.parameters:,} (trainable {info.trainable_parameters:,})\n"
          f"  parameters fused  {info.parameters_fused:,}\n"
          f"  GFLOPs            {info.gflops:.2f}  (2 x MACs of the convolutions, Conv+BN fused, batch 1)")
    return 0


def _import_weights(args: argparse.Namespace) -> int:
    from cocoseg import storage
    from cocoseg.model import build_model, import_reference, save_checkpoint

    data = storage.read_bytes(args.src)
    state, card = import_reference(data, args.src)
    model = build_model(card.variant, card.num_classes)
    model.load_state_dict(state)
    save_checkpoint(args.dest, model, card)
    print(f"wrote {args.dest}: yolov8{card.variant}-seg, {card.num_classes} classes, {len(state)} tensors")
    return 0


# `cocoseg predict` (owned by the post-processing area; the implementation is in cli/predict.py).
def _register_predict(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    from . import predict

    predict.register(sub)
