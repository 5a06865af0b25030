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
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from cocoseg import storage
from cocoseg.utils import UserError, get_logger

if TYPE_CHECKING:  # torch, numpy and PIL are imported when the command runs (fast `cocoseg --help`)
    import numpy as np
    import torch

    from cocoseg.structures import Detections


def __getattr__(name: str):  # the predictor's error class, without importing torch at `--help`
    if name == "ImageReadError":
        from cocoseg.inference import ImageReadError as error

        return error
    raise AttributeError(name)


__all__ = ["IMAGE_SUFFIXES", "expand_images", "predict_images", "register", "run_predictor"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
log = get_logger(__name__)


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
    from cocoseg.inference import Predictor  # heavy import only when the command runs

    given = {"conf": args.conf, "iou": args.iou, "max_det": args.max_det}
    predictor = Predictor.load(args.weights, imgsz=args.imgsz, device=args.device,
                               **{k: v for k, v in given.items() if v is not None})
    summary = run_predictor(predictor, expand_images(args.images), args.out)
    for failure in summary["failed"]:
        print(f"cocoseg predict: error: {failure['image']}: {failure['error']}", file=sys.stderr)
    print(f"{len(summary['images'])} image(s) processed, {len(summary['failed'])} failed; "
          f"results in {args.out}")
    return 1 if summary["failed"] else 0


def expand_images(inputs: Sequence[str]) -> list[str]:
    """Files as given; folders -> their image files (sorted). A missing path stays in the list so
    that it is reported as unreadable with the others still processed."""
    out: list[str] = []
    for uri in inputs:
        if storage.exists(uri) and storage.is_dir(uri):
            found = [e.uri for e in storage.list_files(uri) if e.uri.lower().endswith(IMAGE_SUFFIXES)]
            if not found:
                raise UserError(f"{uri}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(uri)
    return out


def read_image(uri: str) -> np.ndarray:
    """(h, w, 3) uint8 RGB, EXIF orientation applied; ``ImageReadError`` when unreadable."""
    from cocoseg.inference import read_image as read

    return read(uri)


def predict_images(model: torch.nn.Module, class_names: Sequence[str], images: Sequence[str], out_dir: str, *,
                   imgsz: int = 640, **nms: Any) -> dict[str, Any]:
    """Run ``model`` on each image and write ``<stem>.json``, ``<stem>.png`` and ``summary.json``
    under ``out_dir``. ``nms``: ``conf`` / ``iou`` / ``max_det`` other than the PREDICT preset's.
    Returns the summary: ``images`` (written stems, counts) and ``failed``."""
    from cocoseg.inference import Predictor

    predictor = Predictor(model, class_names=class_names, imgsz=imgsz, **nms)
    return run_predictor(predictor, images, out_dir)


def run_predictor(predictor: Any, images: Sequence[str], out_dir: str) -> dict[str, Any]:
    """:func:`predict_images` with a ready :class:`cocoseg.inference.Predictor`."""
    from cocoseg.inference import ImageReadError, read_image

    summary: dict[str, Any] = {"images": [], "failed": [], "imgsz": predictor.imgsz, "conf": predictor.conf,
                               "iou": predictor.iou}
    used: set[str] = set()
    for uri in images:
        try:
            rgb = read_image(uri)
        except ImageReadError as exc:
            log.error("%s", exc)
            summary["failed"].append({"image": uri, "error": str(exc).removeprefix(f"{uri}: ")})
            continue
        (det,) = predictor.predict([rgb])
        stem = _unique_stem(uri, used)
        record = detections_to_json(uri, rgb.shape[:2], det, predictor.class_names)
        storage.write_json(storage.join(out_dir, f"{stem}.json"), record)
        storage.write_bytes(storage.join(out_dir, f"{stem}.png"), draw_overlay(rgb, det, predictor.class_names))
        summary["images"].append({"image": uri, "stem": stem, "detections": len(det)})
        log.info("%s: %d detection(s)", uri, len(det))
    storage.write_json(storage.join(out_dir, "summary.json"), summary)
    return summary


def _unique_stem(uri: str, used: set[str]) -> str:
    stem = PurePosixPath(uri.replace("\\", "/")).stem or "image"
    candidate, k = stem, 1
    while candidate in used:
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return candidate


def detections_to_json(uri: str, orig_hw: tuple[int, int], det: Detections,
                       class_names: Sequence[str]) -> dict:
    """JSON-able record of one image's detections (boxes xyxy in original pixels, masks as RLE):
    the one detection record (:mod:`cocoseg.inference.records`), one entry per detection."""
    from cocoseg.inference import detections_json, detections_record

    return detections_json(uri, detections_record(det, class_names), orig_hw)


def draw_overlay(rgb: np.ndarray, det: Detections, class_names: Sequence[str]) -> bytes:
    """PNG bytes of the image with masks tinted (50 %), boxes outlined and ``name score`` labels."""
    from cocoseg.viz import draw_detections, to_png

    return to_png(draw_detections(rgb, det, class_names))
