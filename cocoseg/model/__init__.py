"""The YOLOv8-seg family (n/s/m/l/x) in plain PyTorch, post-processing and weight import.

- :func:`build_model` / :data:`VARIANTS` (``yolov8.py``), the blocks (``blocks.py``), the head
  (``head.py``);
- :func:`decode` (``decode.py``): the one decoding of the forward's ``RawOutputs`` (train and
  eval mode alike) into ``(pred, proto)``;
- :func:`make_anchors` / :func:`decode_distances` (``anchors.py``), shared with the loss and
  post-processing;
- checkpoints (``weights.py``): :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_weights`,
  :class:`ModelCard`, :func:`import_reference` (reference ``.pt`` via a restricted unpickler);
- size figures (``info.py``): :func:`model_info`.
"""

from .anchors import decode_distances, make_anchors
from .decode import decode
from .info import ModelInfo, model_info
from .weights import (
    CheckpointError,
    ModelCard,
    import_reference,
    load_checkpoint,
    load_weights,
    read_card,
    save_checkpoint,
)
from .yolov8 import VARIANTS, ModelError, Scale, SegmentationModel, build_model

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "ModelCard",
    "ModelError",
    "ModelInfo",
    "Scale",
    "SegmentationModel",
    "build_model",
    "decode",
    "decode_distances",
    "import_reference",
    "load_checkpoint",
    "load_weights",
    "make_anchors",
    "model_info",
    "read_card",
    "save_checkpoint",
]
