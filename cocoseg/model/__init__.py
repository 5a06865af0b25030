"""The YOLOv8-seg family (n/s/m/l/x) in plain PyTorch, post-processing and weight import."""

from .anchors import decode_distances, make_anchors
from .yolov8 import VARIANTS, ModelError, Scale, SegmentationModel, build_model

__all__ = [
    "VARIANTS",
    "ModelError",
    "Scale",
    "SegmentationModel",
    "build_model",
    "decode_distances",
    "make_anchors",
]
