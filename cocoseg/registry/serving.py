"""The MLflow pyfunc model registered with every version: the one predictor on the ONNX export.

This file is logged as MLflow "models from code": MLflow copies it into the model and runs it to
get the model object, so nothing is pickled and loading a version never unpickles anything. It is
a thin wrapper: :class:`cocoseg.inference.Predictor` with an :class:`~cocoseg.inference.OnnxBackend`
(ONNX Runtime, CPU), so a served version answers exactly what ``cocoseg predict`` and
``cocoseg infer`` answer for the same bytes (the same EXIF handling, letterbox, torch NMS, masks
and RLE encoder). Every version ships the ``cocoseg`` package as pyfunc ``code_paths`` and names
torch (CPU build) in its pip requirements (``registry/versions.py``; docs/inference.md says why).

Request: one row per image, column ``image`` holding the encoded file (JPEG/PNG) as base64 text
(or raw bytes when called in-process). Optional params: ``conf`` (0.25), ``iou`` (0.7),
``max_det`` (100), ``masks`` (true): the :data:`cocoseg.inference.SERVE` preset. Response: one
record per image, the detection record (:func:`cocoseg.inference.detections_record`) plus the size::

    {"boxes_xyxy": [[x1, y1, x2, y2], ...]   original-image pixels (EXIF orientation applied)
     "scores": [...], "classes": [...] (0..nc-1), "class_names": [...],
     "masks_rle": [{"size": [h, w], "counts": [...]}, ...]   COCO uncompressed RLE (column-major
                                                           runs, the first of zeros), original
                                                           size; absent when masks=false
     "width": w, "height": h}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import replace
from typing import Any

import mlflow

from cocoseg.inference import SERVE, OnnxBackend, Predictor, decode_image, detections_record

__all__ = ["SegmentationModel", "encoded_image"]

BATCH = 8  # images per forward: bounds a large request's memory (8 x 3 x 640 x 640 float32 = 39 MB)


def encoded_image(value: Any) -> bytes:
    """A request cell -> the encoded file's bytes (base64 text, or bytes in-process)."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("column 'image' must hold base64-encoded JPEG/PNG bytes") from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"column 'image' must hold base64 text or bytes, got {type(value).__name__}")


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Artifacts: ``onnx`` (the graph), ``serving`` (JSON: imgsz, num_classes, class_names, onnx_sha256)."""

    # MLflow 3 wraps a subclass's `predict` for validation from its type hints and warns when it has
    # none. The served input is a DataFrame of encoded images described by the signature logged with
    # the model, so hint-based validation is off (MLflow's own hook for classes that opt out).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        with open(context.artifacts["serving"]) as fh:
            info = json.load(fh)
        with open(context.artifacts["onnx"], "rb") as fh:
            data = fh.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != info["onnx_sha256"]:
            raise RuntimeError(f"model.onnx has SHA-256 {digest}, the registered version expects "
                               f"{info['onnx_sha256']}: refusing to serve an altered graph")
        names = info.get("class_names") or [str(i) for i in range(int(info["num_classes"]))]
        imgsz = int(info["imgsz"])
        self.predictor = Predictor(OnnxBackend(data), class_names=names, imgsz=imgsz).with_protocol(
            replace(SERVE, imgsz=imgsz))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        params = params or {}
        predictor = self.predictor.with_settings(conf=float(params.get("conf", SERVE.conf)),
                                                 iou=float(params.get("iou", SERVE.iou)),
                                                 max_det=int(params.get("max_det", SERVE.max_det)))
        masks = "rle_counts" if bool(params.get("masks", True)) else "none"  # the one RLE encoder, uncompressed
        column = model_input["image"] if hasattr(model_input, "__getitem__") and not isinstance(
            model_input, (str, bytes, list)) else model_input
        values = list(column)
        records = []
        for start in range(0, len(values), BATCH):
            images = [decode_image(encoded_image(v), name=f"image {start + i}")
                      for i, v in enumerate(values[start:start + BATCH])]
            for image, det in zip(images, predictor.predict(images, masks=masks), strict=True):
                record = detections_record(det, predictor.class_names)
                if masks == "none":
                    del record["masks_rle"]
                records.append({**record, "width": int(image.shape[1]), "height": int(image.shape[0])})
        return records


mlflow.models.set_model(SegmentationModel())
