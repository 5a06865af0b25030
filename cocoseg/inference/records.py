"""One image's detections as a record, and the one Arrow schema every table of detections uses.

The record (:func:`detections_record`) is the column form of a :class:`~cocoseg.structures.Detections`:
``boxes_xyxy`` (n x [x1, y1, x2, y2], original-image pixels), ``scores``, ``classes`` (0..nc-1),
``class_names`` and ``masks_rle`` (COCO RLEs ``{"size": [h, w], "counts": ...}``). It is what the
served model answers (plus ``width`` / ``height``) and what ``cocoseg predict`` writes per image
(:func:`detections_json`, one entry per detection).

In a table (Parquet, Ray Data blocks) a record is one row of :data:`DETECTION_COLUMNS` (the
record's columns plus the image's ``width`` / ``height``, masks as their compressed ``counts``
strings, the size being the row's), after the columns that key the row: ``image_id`` for the
evaluate job (:class:`~cocoseg.inference.DetectBatch`) and the served-artifact evaluation (plus
``backend``), ``source_uri`` (and ``error``) for the infer job's Parquet files
(:func:`prediction_schema`). :func:`detection_row` makes such a row, :func:`detections_from_row`
reads one back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cocoseg.model.postprocess import masks_to_rle
from cocoseg.structures import Detections

__all__ = ["DETECTION_COLUMNS", "detection_row", "detection_schema", "detections_from_row", "detections_json",
           "detections_record", "evaluation_schema", "prediction_schema"]

DETECTION_COLUMNS = ("width", "height", "boxes_xyxy", "scores", "classes", "class_names", "masks_rle")


def detections_record(det: Detections, class_names: Sequence[str], *, digits: int | None = 2) -> dict[str, Any]:
    """The record of one image's detections (module doc): ``boxes_xyxy`` rounded to ``digits``
    decimals and ``scores`` to 5 (None: as computed, what evaluation scores), masks as the
    detections' RLEs (``det.masks_rle``, else the one encoder over ``det.masks``; none without masks)."""
    classes = [int(c) for c in det.classes.tolist()]
    rles = det.masks_rle if det.masks_rle is not None else (masks_to_rle(det.masks) if det.masks is not None else [])
    boxes, scores = det.boxes_xyxy.tolist(), det.scores.tolist()
    if digits is not None:
        boxes = [[round(float(v), digits) for v in box] for box in boxes]
        scores = [round(float(s), 5) for s in scores]
    return {"boxes_xyxy": boxes, "scores": scores, "classes": classes,
            "class_names": [class_names[c] if c < len(class_names) else str(c) for c in classes],
            "masks_rle": list(rles)}


def detection_row(det: Detections, class_names: Sequence[str], orig_hw: tuple[int, int], *,
                  digits: int | None = None) -> dict[str, Any]:
    """One table row (:data:`DETECTION_COLUMNS`) of an image of ``orig_hw`` (height, width) pixels;
    its masks must be compressed RLEs (``masks="rle"``) or dense."""
    record = detections_record(det, class_names, digits=digits)
    return {"width": int(orig_hw[1]), "height": int(orig_hw[0]), **record,
            "masks_rle": [r["counts"] for r in record["masks_rle"]]}


def detection_schema(keys: Sequence[tuple[str, Any]] = (), extra: Sequence[tuple[str, Any]] = ()) -> Any:
    """The pyarrow schema of a detections table: ``keys`` (name, type) first, then
    :data:`DETECTION_COLUMNS` (``width`` / ``height`` int32, ``boxes_xyxy`` list of float32 x 4,
    ``scores`` float32, ``classes`` int32, ``class_names`` string, ``masks_rle`` string lists),
    then ``extra``."""
    import pyarrow as pa

    columns = [("width", pa.int32()), ("height", pa.int32()), ("boxes_xyxy", pa.list_(pa.list_(pa.float32(), 4))),
               ("scores", pa.list_(pa.float32())), ("classes", pa.list_(pa.int32())),
               ("class_names", pa.list_(pa.string())), ("masks_rle", pa.list_(pa.string()))]
    return pa.schema([*keys, *columns, *extra])


def evaluation_schema() -> Any:
    """The evaluate job's rows (:class:`~cocoseg.inference.DetectBatch`): ``image_id``, then
    :data:`DETECTION_COLUMNS`."""
    import pyarrow as pa

    return detection_schema([("image_id", pa.int64())])


def prediction_schema() -> Any:
    """The infer job's rows (``pipelines.infer``): ``source_uri``, :data:`DETECTION_COLUMNS` (the
    upright image's size) and ``error`` (null when the image was predicted; else the other
    columns but ``source_uri`` are null)."""
    import pyarrow as pa

    return detection_schema([("source_uri", pa.string())], [("error", pa.string())])


def detections_from_row(row: dict[str, Any]) -> Detections:
    """One table row (:func:`detection_row`) -> :class:`Detections` (masks as compressed RLEs)."""
    size = [int(row["height"]), int(row["width"])]
    boxes = torch.from_numpy(np.asarray(row["boxes_xyxy"], np.float32).reshape(-1, 4))
    return Detections(boxes, torch.from_numpy(np.asarray(row["scores"], np.float32)),
                      torch.from_numpy(np.asarray(row["classes"], np.int64)),
                      masks_rle=[{"size": size, "counts": c} for c in row["masks_rle"]])


def detections_json(uri: str, record: dict[str, Any], orig_hw: tuple[int, int]) -> dict[str, Any]:
    """``cocoseg predict``'s ``<stem>.json``: the record as one entry per detection (``class_id``,
    ``class_name``, ``score``, ``box_xyxy``, ``mask_rle`` when there are masks) with the image's size."""
    masks = record["masks_rle"] or [None] * len(record["scores"])
    rows = []
    for cls, name, score, box, rle in zip(record["classes"], record["class_names"], record["scores"],
                                          record["boxes_xyxy"], masks, strict=True):
        rows.append({"class_id": cls, "class_name": name, "score": score, "box_xyxy": box,
                     **({"mask_rle": rle} if rle is not None else {})})
    return {"image": uri, "height": int(orig_hw[0]), "width": int(orig_hw[1]), "detections": rows}
