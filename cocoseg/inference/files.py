"""Predictions for image files, as ``cocoseg predict`` writes them: for every image
``<stem>.json`` (boxes xyxy in original-image pixels, scores, class ids and names, masks as COCO
RLE) and ``<stem>.png`` (masks, boxes and class names drawn on the image), plus ``summary.json``.
Inputs and the output folder may each be local or ``s3://``. An image that cannot be read is
reported in the summary's ``failed`` and skipped; the others are still processed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from cocoseg import storage
from cocoseg.utils import UserError, get_logger

from .protocol import ImageReadError, read_image

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cocoseg.structures import Detections

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "detections_to_json", "draw_overlay", "expand_images",
           "predict_images", "read_image", "run_predictor"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
log = get_logger(__name__)


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


def predict_images(model: torch.nn.Module, class_names: Sequence[str], images: Sequence[str], out_dir: str, *,
                   imgsz: int = 640, **nms: Any) -> dict[str, Any]:
    """Run ``model`` on each image and write ``<stem>.json``, ``<stem>.png`` and ``summary.json``
    under ``out_dir``. ``nms``: ``conf`` / ``iou`` / ``max_det`` other than the PREDICT preset's.
    Returns the summary: ``images`` (written stems, counts) and ``failed``."""
    from .predictor import Predictor

    predictor = Predictor(model, class_names=class_names, imgsz=imgsz, **nms)
    return run_predictor(predictor, images, out_dir)


def run_predictor(predictor: Any, images: Sequence[str], out_dir: str) -> dict[str, Any]:
    """:func:`predict_images` with a ready :class:`cocoseg.inference.Predictor`."""
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
