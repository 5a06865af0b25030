"""The MLflow pyfunc model registered with every version: ONNX Runtime on encoded images.

This file is logged as MLflow "models from code": MLflow copies it into the model and runs it to
get the model object, so nothing is pickled and loading a version never unpickles anything. It is
deliberately self-contained (numpy, Pillow, pandas, onnxruntime, mlflow; no torch, no cocoseg),
so a serving host needs none of the training stack.

Request: one row per image, column ``image`` holding the encoded file (JPEG/PNG) as base64 text
(or raw bytes when called in-process). Optional params: ``conf`` (0.25), ``iou`` (0.7),
``max_det`` (100), ``masks`` (true). Response: one record per image::

    {"boxes_xyxy": [[x1, y1, x2, y2], ...]   original-image pixels, float
     "scores": [...], "classes": [...] (0..nc-1), "class_names": [...],
     "masks_rle": [{"size": [h, w], "counts": [...]}, ...]   COCO uncompressed RLE (column-major,
                                                            first run counts zeros), original size
     "width": w, "height": h}

Pre/post-processing follows the model card: letterbox to ``imgsz`` (gray 114 padding, centred),
RGB / 255; class-aware greedy NMS; masks = coeffs @ protos upsampled to the network input,
cropped to the box (x1 <= col < x2), > 0, un-padded and resized to the image (bilinear, >= 0.5),
the conventions of ``cocoseg.model.postprocess`` and ``cocoseg.inference.Predictor``: this file is
their torch-free twin for serving hosts, and tests check that both give the same detections (also
on an EXIF-rotated JPEG through ``mlflow models serve``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any

import mlflow
import numpy as np
from PIL import Image, ImageOps

__all__ = ["SegmentationModel", "decode_image", "letterbox", "nms_xyxy", "postprocess", "rle_encode"]

PAD_VALUE = 114


def decode_image(value: Any) -> np.ndarray:
    """base64 text or bytes of an encoded image -> (H, W, 3) uint8 RGB, upright: the EXIF
    orientation is applied, as ``cocoseg.inference.decode_image`` does for ``cocoseg predict``."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError("column 'image' must hold base64-encoded JPEG/PNG bytes") from None
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"column 'image' must hold base64 text or bytes, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(value)) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except Exception as exc:
        raise ValueError(f"cannot decode the image: {exc}") from None


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(H, W, 3) uint8 -> ((3, size, size) float32 in [0, 1], scale, (pad_left, pad_top))."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    return canvas.transpose(2, 0, 1).astype(np.float32) / 255.0, scale, (left, top)


def nms_xyxy(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS; boxes (n, 4) xyxy, scores (n,). Returns kept indices by descending score."""
    order = np.argsort(-scores, kind="stable")
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[order[1:], :2])
        rb = np.minimum(boxes[i, 2:], boxes[order[1:], 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        overlap = inter / np.maximum(areas[i] + areas[order[1:]] - inter, 1e-9)
        order = order[1:][overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """(h, w) bool -> COCO uncompressed RLE (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]  # COCO RLE always starts with a run of zeros
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def resize_bilinear(values: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(n, h, w) float -> (n, out_h, out_w): bilinear with half-pixel centres and no antialiasing
    (the same numbers as torch ``F.interpolate(..., mode="bilinear", align_corners=False)``)."""
    _, h, w = values.shape

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)

    y0, y1, wy = axis(out_h, h)
    x0, x1, wx = axis(out_w, w)
    top = values[:, y0][:, :, x0] * (1 - wx) + values[:, y0][:, :, x1] * wx
    bottom = values[:, y1][:, :, x0] * (1 - wx) + values[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def _masks(coeffs: np.ndarray, proto: np.ndarray, boxes_in: np.ndarray, size: int,
           scale: float, pad: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """(n, H0, W0) bool masks at the original image size (the "native" path of the spec, 10.2)."""
    c, ph, pw = proto.shape
    logits = resize_bilinear((coeffs @ proto.reshape(c, -1)).reshape(-1, ph, pw), size, size)
    cols, rows = np.arange(size)[None, None, :], np.arange(size)[None, :, None]
    x1, y1, x2, y2 = (boxes_in[:, i, None, None] for i in range(4))
    binary = (logits > 0) & (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    h0, w0 = shape
    left, top = pad
    inner = binary[:, top:top + round(h0 * scale), left:left + round(w0 * scale)].astype(np.float32)
    return resize_bilinear(inner, h0, w0) >= 0.5


def postprocess(pred: np.ndarray, proto: np.ndarray, *, num_classes: int, size: int, scale: float,
                pad: tuple[int, int], shape: tuple[int, int], conf: float, iou: float, max_det: int,
                masks: bool) -> dict[str, Any]:
    """One image: pred (4 + nc + 32, A), proto (32, h, w) -> the response record."""
    rows = pred.T  # (A, 4 + nc + 32)
    probs = rows[:, 4:4 + num_classes]
    classes = probs.argmax(axis=1)
    scores = probs[np.arange(len(rows)), classes]
    sel = np.flatnonzero(scores > conf)
    cxcywh = rows[sel, :4]
    boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
    # Class-aware NMS in one pass: shift each class far apart (boxes are < 7680 px).
    keep = nms_xyxy(boxes + classes[sel, None] * 7680.0, scores[sel], iou)[:max_det]
    boxes, idx = boxes[keep], sel[keep]
    h0, w0 = shape
    left, top = pad
    orig = (boxes - np.array([left, top, left, top], dtype=np.float32)) / scale
    orig = np.clip(orig, 0, [w0, h0, w0, h0])
    record = {"boxes_xyxy": orig.round(2).tolist(), "scores": scores[idx].round(5).tolist(),
              "classes": classes[idx].tolist(), "width": w0, "height": h0}
    if masks:
        found = _masks(rows[idx, 4 + num_classes:], proto, boxes, size, scale, pad, shape) if len(idx) else ()
        record["masks_rle"] = [rle_encode(m) for m in found]
    return record


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Artifacts: ``onnx`` (the graph), ``serving`` (JSON: imgsz, num_classes, class_names, sha256)."""

    # MLflow 3 wraps a subclass's `predict` for validation from its type hints and warns when it has
    # none. The served input is a DataFrame of encoded images described by the signature logged with
    # the model, so hint-based validation is off (MLflow's own hook for classes that opt out).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import onnxruntime as ort

        with open(context.artifacts["serving"]) as fh:
            self.info = json.load(fh)
        with open(context.artifacts["onnx"], "rb") as fh:
            data = fh.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.info["onnx_sha256"]:
            raise RuntimeError(f"model.onnx has SHA-256 {digest}, the registered version expects "
                               f"{self.info['onnx_sha256']}: refusing to serve an altered graph")
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        params = params or {}
        conf = float(params.get("conf", 0.25))
        iou = float(params.get("iou", 0.7))
        max_det = int(params.get("max_det", 100))
        want_masks = bool(params.get("masks", True))
        column = model_input["image"] if hasattr(model_input, "__getitem__") and not isinstance(
            model_input, (str, bytes, list)) else model_input
        size, nc = int(self.info["imgsz"]), int(self.info["num_classes"])
        names = self.info.get("class_names") or [str(i) for i in range(nc)]
        records = []
        for value in list(column):
            image = decode_image(value)
            x, scale, pad = letterbox(image, size)
            pred, proto = self.session.run(["pred", "proto"], {"images": x[None]})
            rec = postprocess(pred[0], proto[0], num_classes=nc, size=size, scale=scale, pad=pad,
                              shape=image.shape[:2], conf=conf, iou=iou, max_det=max_det, masks=want_masks)
            rec["class_names"] = [names[c] for c in rec["classes"]]
            records.append(rec)
        return records


mlflow.models.set_model(SegmentationModel())
