"""CLI sub-command: synth (a synthetic COCO-Seg dataset; the ingest job is cocoseg.jobs.ingest)."""

from __future__ import annotations

import argparse
import json

from cocoseg.utils import UserError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, e.g. 160x128, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError("--size: width and height must be >= 32")
    return w, h


def _synth(args: argparse.Namespace) -> int:
    from cocoseg.ingest.synthetic import write_synthetic_coco

    try:
        summary = write_synthetic_coco(args.dest, images=args.images, size=args.size, seed=args.seed,
                                       val_fraction=args.val_fraction, max_instances=args.max_instances,
                                       classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()))
    except ValueError as exc:
        raise UserError(f"synth: {exc}") from None
    print(json.dumps(summary, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    p = sub.add_parser("synth", help="write a deterministic synthetic COCO-Seg dataset (shapes)",
                       description="Write a COCO-layout dataset of coloured shapes with exact polygon masks.")
    p.add_argument("dest", help="output folder or s3://bucket/prefix")
    p.add_argument("--images", type=int, default=200, help="number of images (train + val)")
    p.add_argument("--size", type=_size, default=(160, 128), help="WIDTHxHEIGHT in pixels (default 160x128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--max-instances", type=int, default=4, help="instances per image: 1..N")
    p.add_argument("--classes", default="circle,square,triangle,star", help="comma-separated shape classes")
    p.set_defaults(func=_synth)
