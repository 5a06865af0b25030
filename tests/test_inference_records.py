"""The one detection record and its one Arrow schema: evaluate's, infer's and the served
evaluation's tables share the detection columns, and a record survives Parquet and comes back
as the same detections; ``cocoseg predict``'s JSON is the same record, one entry per detection."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pycocotools import mask as mask_utils

from cocoseg.inference import (
    DETECTION_COLUMNS,
    detection_row,
    detections_from_row,
    detections_json,
    detections_record,
    evaluation_schema,
    prediction_schema,
)
from cocoseg.model.postprocess import masks_to_rle
from cocoseg.structures import Detections

NAMES = ["circle", "square", "triangle"]


def _detections(hw: tuple[int, int] = (30, 40)) -> Detections:
    masks = np.zeros((2, *hw), bool)
    masks[0, 2:9, 3:17] = True
    masks[1, 10:25, 20:38] = True
    return Detections(torch.tensor([[3.123456, 2.5, 17.0, 9.0], [20.0, 10.0, 38.0, 25.0]]),
                      torch.tensor([0.91234567, 0.3]), torch.tensor([2, 0]), masks_rle=masks_to_rle(masks))


def test_one_schema_for_evaluate_infer_and_the_served_evaluation() -> None:
    from cocoseg.batch.served import _schema as served_schema

    tables = {"evaluate": evaluation_schema(), "infer": prediction_schema(), "served": served_schema()}
    for name, schema in tables.items():
        fields = [f for f in schema if f.name in DETECTION_COLUMNS]
        assert [f.name for f in fields] == list(DETECTION_COLUMNS), name
        assert fields == [f for f in evaluation_schema() if f.name in DETECTION_COLUMNS], name


def test_a_record_round_trips_through_parquet() -> None:
    det = _detections()
    row = {"image_id": 7, **detection_row(det, NAMES, (30, 40))}
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=evaluation_schema()), sink)
    (back,) = pq.read_table(io.BytesIO(sink.getvalue())).to_pylist()
    assert back["class_names"] == ["triangle", "circle"] and (back["width"], back["height"]) == (40, 30)
    got = detections_from_row(back)
    assert torch.equal(got.boxes_xyxy, det.boxes_xyxy) and torch.equal(got.scores, det.scores)
    assert got.classes.tolist() == [2, 0]
    for a, b in zip(got.masks_rle, det.masks_rle, strict=True):
        assert np.array_equal(mask_utils.decode({"size": a["size"], "counts": a["counts"].encode()}),
                              mask_utils.decode({"size": b["size"], "counts": b["counts"].encode()}))


def test_predict_json_is_the_record_one_entry_per_detection() -> None:
    det = _detections()
    record = detections_record(det, NAMES)
    doc = detections_json("a.jpg", record, (30, 40))
    assert (doc["image"], doc["height"], doc["width"]) == ("a.jpg", 30, 40)
    assert [d["box_xyxy"] for d in doc["detections"]] == record["boxes_xyxy"] == [[3.12, 2.5, 17.0, 9.0],
                                                                                  [20.0, 10.0, 38.0, 25.0]]
    assert [(d["class_id"], d["class_name"], d["score"]) for d in doc["detections"]] == [(2, "triangle", 0.91235),
                                                                                         (0, "circle", 0.3)]
    assert [d["mask_rle"] for d in doc["detections"]] == record["masks_rle"]
    no_masks = Detections(det.boxes_xyxy, det.scores, det.classes)
    assert all("mask_rle" not in d for d in detections_json("a.jpg", detections_record(no_masks, NAMES), (30, 40))
               ["detections"])
