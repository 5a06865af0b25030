"""What makes two AP figures comparable (:class:`Protocol`) and its two presets, :data:`EVALUATE`
and :data:`PREDICT`; and image files in: decode with EXIF orientation, read from local or
``s3://``, weights from a folder or the registry."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from cocoseg import __version__, storage
from cocoseg.utils import UserError

__all__ = ["EVALUATE", "EVAL_CODE_VERSION", "LETTERBOX_RULE", "PREDICT", "SERVE", "ImageReadError", "Protocol",
           "decode_image", "read_image", "resolve_weights"]

LETTERBOX_RULE = "square imgsz; gain min(S/h, S/w), upscaling; bilinear; pad 114 split round(d/2 -/+ 0.1)"
# Bump when post-processing or scoring changes numbers: AP measured under another value is not comparable.
EVAL_CODE_VERSION = "2"


class ImageReadError(UserError):
    """An input image that is missing or cannot be decoded."""


@dataclass(frozen=True)
class Protocol:
    """The settings an AP figure depends on; two figures compare only under equal hashes."""

    imgsz: int = 640
    conf: float = 0.001
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = True
    letterbox: str = LETTERBOX_RULE
    code_version: str = f"cocoseg {__version__} eval {EVAL_CODE_VERSION}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# The evaluation protocol (spec 11): every detection a COCO AP can use (conf 0.001, up to 300 per
# image, each box scored for every class above conf). Evaluate, training's validation and the gate.
EVALUATE = Protocol()
# Predict mode: the detections a user is shown (conf 0.25, one label per box). `cocoseg predict`,
# `cocoseg infer` (evaluate.predict_conf), the validation preview and the Predictor's defaults.
PREDICT = Protocol(conf=0.25, multi_label=False)
# The served model's defaults: predict mode with at most 100 boxes per image in a response
# (each request may pass conf / iou / max_det; registry/serving.py).
SERVE = replace(PREDICT, max_det=100)


def decode_image(data: bytes, *, name: str = "image") -> np.ndarray:
    """Encoded image file -> (h, w, 3) uint8 RGB, upright (EXIF orientation applied).

    Raises :class:`ImageReadError` naming ``name`` for anything Pillow cannot decode, including
    images past Pillow's decompression-bomb limit.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{name}: not a decodable image ({len(data)} bytes): {exc}") from None


def resolve_weights(weights: str) -> str:
    """A checkpoint folder (local or ``s3://``) as is; ``models:/NAME@ALIAS`` (or ``/VERSION``)
    downloaded from the MLflow registry (``MLFLOW_TRACKING_URI``) to a local folder holding the
    version's ``model.safetensors`` and ``model_card.json``."""
    if not weights.startswith("models:/"):
        return weights
    import tempfile
    from pathlib import Path

    import mlflow

    dest = tempfile.mkdtemp(prefix="cocoseg-weights-")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=weights, dst_path=dest))
    found = {p.name: p for p in local.rglob("*") if p.name in ("model.safetensors", "model_card.json")}
    if len(found) != 2:
        raise UserError(f"{weights}: the registered model holds no model.safetensors + model_card.json")
    folder = Path(dest) / "checkpoint"
    folder.mkdir()
    for name, path in found.items():
        (folder / name).write_bytes(path.read_bytes())
    return str(folder)


def read_image(uri: str) -> np.ndarray:
    """An image file (local or ``s3://``) -> upright (h, w, 3) uint8; :class:`ImageReadError` if unreadable."""
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError, storage.StorageError) as exc:
        raise ImageReadError(f"{uri}: cannot read image: {exc}") from None
    return decode_image(data, name=uri)
