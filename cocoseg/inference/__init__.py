"""The one predictor: images (or snapshot rows) -> :class:`~cocoseg.structures.Detections`.

Every path that turns pixels into detections goes through here: training validation
(``engine/build.build_validator``), ``cocoseg predict``, the MLflow preview, ``pipelines.evaluate``,
``pipelines.infer``, the served pyfunc model (``registry/serving.py``, ONNX backend) and the
export latency bench (torch, ONNX Runtime and TensorRT backends)::

    predictor = Predictor.load("s3://bucket/runs/r1/weights/best", conf=0.25)
    (det,) = predictor.predict([decode_image(open("a.jpg", "rb").read())])   # original-image pixels
    served = Predictor(OnnxBackend("model.onnx"), class_names=names, imgsz=640)   # same answers

The predictor is: the same preprocessing (letterbox; EXIF in :func:`decode_image`) -> a *backend*
that runs the network (:class:`Backend`: :class:`TorchBackend` for an ``nn.Module``,
:class:`OnnxBackend` for the ONNX export, ``cocoseg.export.tensorrt.TensorRTBackend`` for an
engine) and returns its decoded outputs ``pred`` / ``proto`` (the export's I/O signature; for
ONNX and TensorRT :func:`cocoseg.model.decode.decode` is inside the graph) -> the one
post-processing (torch NMS, masks, RLE). Detections leave as one record with one Arrow schema
(:mod:`.records`: evaluate, infer, predict and the served model). One letterbox type
(:class:`~cocoseg.structures.LetterboxParams`) travels from the decode to post-processing; NMS,
masks and the RLE encoder are those of :mod:`cocoseg.model.postprocess`.

EXIF orientation: image *files* (predict, infer, serving) are shown upright, so
:func:`decode_image` applies the EXIF orientation; snapshot rows (validation, evaluate) are not
rotated, because COCO's sizes and polygons refer to the stored pixel grid
(:func:`cocoseg.data.decode.decode_rgb`).

:class:`Protocol` names what makes two AP figures comparable (imgsz, conf, iou, max_det,
multi-label, letterbox rule, evaluation code version); its :meth:`Protocol.hash` is recorded by
the evaluate job and compared by the promotion gate. Two presets: :data:`EVALUATE` (conf 0.001,
multi-label: what AP is measured under) and :data:`PREDICT` (conf 0.25, one label per box: what
``predict``, ``infer`` and the served model (:data:`SERVE`, at most 100 boxes) show).
"""

from __future__ import annotations

from cocoseg.model.postprocess import encode_rle, masks_to_rle

from .backends import Backend, OnnxBackend, TorchBackend
from .batch import DetectBatch, PredictImages
from .predictor import Predictor
from .protocol import (
    EVAL_CODE_VERSION,
    EVALUATE,
    LETTERBOX_RULE,
    PREDICT,
    SERVE,
    ImageReadError,
    Protocol,
    decode_image,
    read_image,
    resolve_weights,
)
from .records import (
    DETECTION_COLUMNS,
    detection_row,
    detection_schema,
    detections_from_row,
    detections_json,
    detections_record,
    evaluation_schema,
    prediction_schema,
)

__all__ = ["DETECTION_COLUMNS", "EVALUATE", "EVAL_CODE_VERSION", "LETTERBOX_RULE", "PREDICT", "SERVE", "Backend", "DetectBatch", "ImageReadError",
           "OnnxBackend", "PredictImages", "Predictor", "Protocol", "TorchBackend", "decode_image",
           "detection_row", "detection_schema", "detections_from_row", "detections_json", "detections_record",
           "evaluation_schema",
           "encode_rle", "masks_to_rle", "prediction_schema", "read_image", "resolve_weights"]
