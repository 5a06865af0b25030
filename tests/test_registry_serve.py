"""``mlflow models serve`` on ``models:/NAME@champion`` answers a request carrying an encoded image
with boxes and masks (the pyfunc runs the ONNX with onnxruntime; no training stack needed)."""

from __future__ import annotations

import uuid

import pytest
from export_helpers import encoded_png, make_export, serve_and_predict

from cocoseg.registry import register_export


@pytest.mark.slow
def test_models_serve_answers_an_encoded_image(mlflow_server, tmp_path):
    name = f"seg-{uuid.uuid4().hex[:8]}"
    register_export(make_export(tmp_path / "exp", metric=0.3), name=name, tracking_uri=mlflow_server)
    answer = serve_and_predict(f"models:/{name}@champion", mlflow_server, encoded_png(96, 64, seed=3), tmp_path,
                               conf=0.3, max_det=5)
    (record,) = answer["predictions"]
    assert record["width"] == 96 and record["height"] == 64
    assert 0 < len(record["boxes_xyxy"]) <= 5
    assert len(record["masks_rle"]) == len(record["scores"]) == len(record["class_names"])
    assert all(sum(m["counts"]) == 96 * 64 for m in record["masks_rle"])
