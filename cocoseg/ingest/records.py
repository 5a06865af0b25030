"""Per-record validation and quarantine: pure functions, no Ray.

:func:`process_record` is what each shard task of the ingest job
(:func:`cocoseg.ingest.snapshot.write_shard`) runs on each of its records (see
:mod:`cocoseg.ingest.coco`): it reads the image bytes, checks them, checks every annotation, and
returns one row: the snapshot columns (:data:`cocoseg.data.schema.SNAPSHOT_SCHEMA`), plus
``_keep`` (the image is written) and ``_rejects`` (JSON list of quarantine rows).

Reasons (the ``reason`` column of ``_quarantine.parquet``). Image level, the image and all its
instances are rejected:

- ``unreadable_image``: not an image format PIL can identify (or the read failed);
- ``truncated_image``: the encoded stream ends early;
- ``corrupt_image``: the header parses but the data does not decode;
- ``missing_file``: the annotation names a file the source does not have;
- ``size_mismatch``: decoded width/height differ from the annotation's;
- ``duplicate_image_id``: a second image with an id already seen (set by the source reader).

Instance level, only that instance is rejected:

- ``polygon_too_few_points``: a polygon part with < 3 points (or an odd number of values),
  or no segmentation at all;
- ``non_finite_coordinates``: NaN/inf in a polygon or box (or an unparsable YOLO line);
- ``box_outside_image``: the box leaves the image by more than the tolerance;
- ``box_non_positive``: the box has width or height <= 0;
- ``unknown_category``: the category id (or YOLO class) is not in the class map;
- ``bad_rle``: a crowd RLE that does not decode or does not match the image size;
- ``orphan_annotation``: an annotation of an image id the file does not have (source reader).

Greyscale, CMYK and palette images are accepted; the original bytes are kept untouched.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from cocoseg import storage

__all__ = [
    "IMAGE_REASONS",
    "INSTANCE_REASONS",
    "BadImage",
    "check_annotation",
    "inspect_image",
    "process_record",
]

IMAGE_REASONS = ("unreadable_image", "truncated_image", "corrupt_image", "missing_file", "size_mismatch",
                 "duplicate_image_id")
INSTANCE_REASONS = ("polygon_too_few_points", "non_finite_coordinates", "box_outside_image",
                    "box_non_positive", "unknown_category", "bad_rle", "orphan_annotation")
DECODE_CHECKS = ("header", "draft", "full")

_KNOWN_MAGIC = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"RIFF")

# Pillow refuses images above ~179 Mpx as a decompression-bomb guard; COCO-scale photos are far
# below, so keep the guard but turn its warning into the error it would become at 2x.
Image.MAX_IMAGE_PIXELS = 200_000_000


class BadImage(Exception):
    """An image-level rejection: ``reason`` is one of :data:`IMAGE_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def inspect_image(data: bytes, decode_check: str = "draft") -> tuple[int, int, str]:
    """Check encoded image bytes; return ``(width, height, mode)`` or raise :class:`BadImage`.

    ``decode_check``: ``header`` parses the header only (plus PIL's ``verify``); ``draft``
    decodes JPEGs at 1/8 scale (DCT scaling still walks the whole entropy-coded stream, so
    truncation and broken data are found at about half the cost) and other formats fully;
    ``full`` decodes every image at full size.
    """
    if not data:
        raise BadImage("truncated_image", "the file is empty")
    try:
        img = Image.open(io.BytesIO(data))
        width, height, mode, fmt = img.width, img.height, img.mode, img.format
    except UnidentifiedImageError:
        if data.startswith(_KNOWN_MAGIC):  # a JPEG/PNG/GIF whose header is broken
            raise BadImage("corrupt_image", "the image header does not parse") from None
        raise BadImage("unreadable_image", "not a recognised image format") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise BadImage("corrupt_image", f"header does not parse: {exc}") from None
    try:
        if decode_check == "header":
            img.verify()
            if fmt == "JPEG" and b"\xff\xd9" not in data[-64:]:
                raise BadImage("truncated_image", "JPEG end-of-image marker missing")
            return width, height, mode
        img = Image.open(io.BytesIO(data))
        if decode_check == "draft" and fmt == "JPEG":
            img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
        img.load()
    except BadImage:
        raise
    except OSError as exc:
        reason = "truncated_image" if "truncated" in str(exc).lower() else "corrupt_image"
        raise BadImage(reason, str(exc)) from None
    except Exception as exc:
        raise BadImage("corrupt_image", f"{type(exc).__name__}: {exc}") from None
    return width, height, mode


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def _crowd_rle(segmentation: Mapping[str, Any], width: int, height: int) -> dict[str, Any]:
    size = [int(v) for v in segmentation.get("size", [])]
    if size != [height, width]:
        raise ValueError(f"RLE size {size} differs from the image's [{height}, {width}]")
    counts = segmentation.get("counts")
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    elif isinstance(counts, str):
        rle = {"size": size, "counts": counts.encode()}
    else:
        raise ValueError("RLE 'counts' must be a list or a string")
    mask_utils.area(rle)  # decodes the counts: raises on garbage
    return rle


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _segmentation(ann: Mapping[str, Any], width: int, height: int, normalized: bool):
    """-> (polygons in px, crowd RLE or None, iscrowd); raises :class:`_Rejected`."""
    segmentation, crowd = ann.get("segmentation"), bool(ann.get("iscrowd", 0))
    if isinstance(segmentation, Mapping):
        try:
            return [], _crowd_rle(segmentation, width, height), True
        except Exception as exc:
            raise _Rejected("bad_rle", str(exc)) from None
    polygons: list[list[float]] = []
    for part in segmentation if isinstance(segmentation, list) else []:
        values = [float(v) for v in part] if isinstance(part, list) else [math.nan]
        if not _finite(values):
            raise _Rejected("non_finite_coordinates", "polygon has NaN or infinite coordinates")
        if normalized:
            values = [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
        polygons.append(values)
    if not polygons or any(len(p) < 6 or len(p) % 2 for p in polygons):
        sizes = [len(p) // 2 for p in polygons]
        raise _Rejected("polygon_too_few_points", f"polygon parts with {sizes} points (each needs >= 3)")
    if crowd:  # a crowd region given as polygons: store it the COCO way, as one RLE
        return [], mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)), True
    return polygons, None, False


def _box(bbox: Any, polygons: list[list[float]], rle, width: int, height: int, tol: float) -> list[float]:
    """The checked xywh box (derived from the mask when ``bbox`` is None); raises :class:`_Rejected`."""
    if bbox is None and rle is not None:
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
    elif bbox is None:
        xs = np.concatenate([np.asarray(p[0::2]) for p in polygons])
        ys = np.concatenate([np.asarray(p[1::2]) for p in polygons])
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise _Rejected("non_finite_coordinates", f"bbox {bbox!r} is not four numbers") from None
    if not _finite((x, y, w, h)):
        raise _Rejected("non_finite_coordinates", f"bbox {bbox} has NaN or infinite values")
    if w <= 0 or h <= 0:
        raise _Rejected("box_non_positive", f"bbox {bbox} has width or height <= 0")
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise _Rejected("box_outside_image", f"bbox {[x, y, w, h]} leaves the {width}x{height} image by > {tol} px")
    return [x, y, w, h]


def check_annotation(ann: Mapping[str, Any], width: int, height: int, normalized: bool,
                     id_to_index: Mapping[int, int], tolerance_px: float) -> tuple[dict[str, Any] | None, str, str]:
    """Validate one raw annotation; return ``(snapshot annotation, "", "")`` or ``(None, reason, detail)``.

    Polygons become pixels (``normalized``: YOLO coordinates are scaled by width/height); a
    missing bbox or area is derived from the mask (pycocotools rasterisation, like COCO's own).
    """
    cid = ann.get("category_id")
    if cid is None or int(cid) not in id_to_index:
        shown = cid if cid is not None else f"class {ann.get('source_class')}"
        return None, "unknown_category", f"category {shown} is not in the class map"
    try:
        polygons, rle, crowd = _segmentation(ann, width, height, normalized)
        box = _box(ann.get("bbox"), polygons, rle, width, height, tolerance_px)
    except _Rejected as rejected:
        return None, rejected.reason, rejected.detail
    area = ann.get("area")
    if area is None or not math.isfinite(float(area)):
        mask_rle = rle if rle is not None else mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        area = float(mask_utils.area(mask_rle))
    return {
        "id": int(ann.get("id", -1)),
        "category": id_to_index[int(cid)],
        "category_id": int(cid),
        "bbox_xywh": box,
        "area": float(area),
        "iscrowd": crowd,
        "polygons": polygons,
        "rle_counts": rle["counts"].decode() if rle is not None else "",
    }, "", ""


def _reject(record: Mapping[str, Any], annotation_id: int | None, reason: str, detail: str) -> dict[str, Any]:
    return {"split": record["split"], "image_id": int(record["image_id"]), "file_name": record["file_name"],
            "annotation_id": annotation_id, "reason": reason, "detail": detail}


def _read(record: Mapping[str, Any]) -> bytes:
    try:
        return storage.read_bytes(record["uri"])
    except FileNotFoundError:
        raise BadImage("missing_file", f"{record['uri']} does not exist") from None
    except OSError as exc:
        raise BadImage("unreadable_image", str(exc)) from None


def process_record(record: Mapping[str, Any], id_to_index: Mapping[int, int], tolerance_px: float = 2.0,
                   decode_check: str = "draft") -> dict[str, Any]:
    """One record -> one snapshot row plus ``_keep`` (false for an image-level reject) and ``_rejects``."""
    anns = record["anns"] or []
    row = {"image_id": int(record["image_id"]), "file_name": record["file_name"], "split": record["split"],
           "width": int(record["width"]), "height": int(record["height"]), "image": b"", "annotations": []}
    rejects: list[dict[str, Any]] = []
    try:
        data = _read(record)
        width, height, _mode = inspect_image(data, decode_check)
        if row["width"] >= 0 and (width, height) != (row["width"], row["height"]):
            raise BadImage("size_mismatch", f"decoded {width}x{height}, annotation says "
                                            f"{row['width']}x{row['height']}")
    except BadImage as bad:
        rejects.append(_reject(record, None, bad.reason, bad.detail))
        rejects.extend(_reject(record, int(a.get("id", -1)), bad.reason, "image rejected") for a in anns)
        return {**row, "_keep": False, "_rejects": json.dumps(rejects)}
    row.update(width=width, height=height, image=data)
    for ann in anns:
        out, reason, detail = check_annotation(ann, width, height, bool(record["normalized"]), id_to_index,
                                               tolerance_px)
        if out is None:
            rejects.append(_reject(record, int(ann.get("id", -1)), reason, detail))
        else:
            row["annotations"].append(out)
    return {**row, "_keep": True, "_rejects": json.dumps(rejects) if rejects else ""}

