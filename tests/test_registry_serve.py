"""``mlflow models serve`` on ``models:/NAME@champion`` answers a request carrying an encoded image
with boxes and masks: the pyfunc is the one predictor (``cocoseg.inference.Predictor``) on the
ONNX backend, loaded from the ``cocoseg`` package shipped with the version (``code_paths``)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from export_helpers import encoded_png, make_export, serve_and_predict
from pycocotools import mask as mask_utils

from cocoseg.registry import download, register_export


@pytest.mark.slow
def test_models_serve_answers_an_encoded_image(mlflow_server, tmp_path):

    from cocoseg.inference import OnnxBackend, Predictor, decode_image, detections_record

    name = f"seg-{uuid.uuid4().hex[:8]}"
    export = make_export(tmp_path / "exp", metric=0.3)
    register_export(export, name=name, tracking_uri=mlflow_server)
    png = encoded_png(96, 64, seed=3)
    answer = serve_and_predict(f"models:/{name}@champion", mlflow_server, png, tmp_path, conf=0.3, max_det=5)
    (record,) = answer["predictions"]
    assert record["width"] == 96 and record["height"] == 64
    assert 0 < len(record["boxes_xyxy"]) <= 5
    assert len(record["masks_rle"]) == len(record["scores"]) == len(record["class_names"])
    assert all(sum(m["counts"]) == 96 * 64 for m in record["masks_rle"])  # uncompressed COCO RLE
    for m in record["masks_rle"]:  # ... the same masks as the one encoder's compressed form
        compressed = mask_utils.frPyObjects(m, 64, 96)
        assert mask_utils.decode(compressed).shape == (64, 96)
    # Exactly what the predictor answers in-process on the export's ONNX (same code, same encoder).
    predictor = Predictor(OnnxBackend(export / "model.onnx"), class_names=["a", "b", "c"], imgsz=64, conf=0.3,
                          max_det=5)
    (det,) = predictor.predict([decode_image(png)], masks="rle_counts")
    assert record == {**detections_record(det, ["a", "b", "c"]), "width": 96, "height": 64}
    # The version carries the cocoseg package and names torch (CPU build) among its requirements.
    local = download(mlflow_server, f"models:/{name}@champion", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "code" / "cocoseg" / "inference" / "predictor.py").is_file(), local
    requirements = (tmp_path / "dl" / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in requirements and "\ntorch==" in requirements
    assert np.isfinite(record["scores"]).all()
