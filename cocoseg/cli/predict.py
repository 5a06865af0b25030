"""``cocoseg predict WEIGHTS IMAGES... --out DIR``: detections as JSON plus PNG overlays.

WEIGHTS is a cocoseg checkpoint folder (``model.safetensors`` + ``model_card.json``) or
``models:/NAME@ALIAS``; IMAGES
are image files or folders of them; WEIGHTS, IMAGES and DIR may each be local or ``s3://``. For
every image ``<stem>.json`` (boxes in original-image pixels, scores, class ids and names, masks
as COCO RLE) and ``<stem>.png`` (masks, boxes and class names drawn on the image) are written,
plus ``summary.json``. An image that cannot be read is reported and skipped; the others are
still processed and the exit status is 1. Detection runs through :class:`cocoseg.inference.Predictor`
(EXIF orientation applied, as the served model does).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a checkpoint on images: JSON detections + PNG overlays",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="cocoseg checkpoint folder (local or s3://)")
    p.add_argument("images", nargs="+", help="image files or folders (local or s3://)")
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    # Unset: the PREDICT preset's (cocoseg.inference.PREDICT; not imported here: no torch at --help).
    p.add_argument("--conf", type=float, default=None, help="score threshold (default: the predict preset's, 0.25)")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: the predict preset's, 0.7)")
    p.add_argument("--max-det", type=int, default=None,
                   help="detections kept per image (default: the predict preset's, 300)")
    p.add_argument("--imgsz", type=int, default=0, help="network input side (default: the model card's)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cocoseg.inference import Predictor  # heavy imports only when the command runs
    from cocoseg.inference.files import expand_images, run_predictor

    given = {"conf": args.conf, "iou": args.iou, "max_det": args.max_det}
    predictor = Predictor.load(args.weights, imgsz=args.imgsz, device=args.device,
                               **{k: v for k, v in given.items() if v is not None})
    summary = run_predictor(predictor, expand_images(args.images), args.out)
    for failure in summary["failed"]:
        print(f"cocoseg predict: error: {failure['image']}: {failure['error']}", file=sys.stderr)
    print(f"{len(summary['images'])} image(s) processed, {len(summary['failed'])} failed; "
          f"results in {args.out}")
    return 1 if summary["failed"] else 0
