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
post-processing (torch NMS, masks, RLE). One letterbox type
(:class:`~cocoseg.structures.LetterboxParams`) travels from the decode to post-processing; NMS,
masks and the RLE encoder are those of :mod:`cocoseg.model.postprocess`.

EXIF orientation: image *files* (predict, infer, serving) are shown upright, so
:func:`decode_image` applies the EXIF orientation; snapshot rows (validation, evaluate) are not
rotated, because COCO's sizes and polygons refer to the stored pixel grid
(:func:`cocoseg.data.decode.decode_rgb`).

:class:`Protocol` names what makes two AP figures comparable (imgsz, conf, iou, max_det,
multi-label, letterbox rule, evaluation code version); its :meth:`Protocol.hash` is recorded by
the evaluate job and compared by the promotion gate.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
import torch

from cocoseg import __version__, storage
from cocoseg.data.letterbox import letterbox
from cocoseg.model.postprocess import decode, encode_rle, masks_to_rle, postprocess
from cocoseg.structures import Detections, LetterboxParams, letterbox_params
from cocoseg.utils import UserError

__all__ = ["DETECTION_COLUMNS", "EVAL_CODE_VERSION", "LETTERBOX_RULE", "Backend", "DetectBatch", "ImageReadError",
           "OnnxBackend", "PredictImages", "Predictor", "Protocol", "TorchBackend", "decode_image",
           "detections_from_row", "detections_record", "encode_rle", "masks_to_rle", "prediction_schema",
           "read_image", "resolve_weights"]

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


class Backend(TypingProtocol):
    """What runs the network for a :class:`Predictor`.

    ``backend(x)``: ``x`` (B, 3, S, S) float32 RGB in [0, 1], letterboxed, on ``backend.device``
    -> ``(pred, proto)`` float32 on any device: ``pred`` (B, 4 + nc + 32, A) (cx, cy, w, h in
    input pixels, class probabilities, mask coefficients), ``proto`` (B, 32, S/4, S/4): the
    decoded outputs, i.e. the ONNX export's ``pred`` / ``proto`` (``cocoseg.export.onnx.IO_SIGNATURE``).
    """

    device: torch.device
    name: str

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchBackend:
    """An eager cocoseg model (forward -> ``RawOutputs``) and the one :func:`decode`.

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` (autocast; CUDA only, fp32 elsewhere).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device | None = None,
                 precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise UserError(f"precision {precision!r}: use fp32, bf16 or fp16")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.amp_dtype = dtype if self.device.type == "cuda" else None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            pred, proto = decode(self.model(x))
        return pred.float(), proto.float()


class OnnxBackend:
    """The ONNX export (a path or the file's bytes) under ONNX Runtime, CPU execution provider.

    Asks the graph for ``pred`` and ``proto`` only: an export with in-graph NMS (``keep``, conf
    and IoU baked in) is post-processed by the predictor's own torch NMS like any other, so its
    settings are the predictor's. A graph with a static batch is run that many images at a time.
    ``threads``: ONNX Runtime intra-op threads (0 = its default).
    """

    name = "onnxruntime"

    def __init__(self, onnx: str | Path | bytes, *, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        source = onnx if isinstance(onnx, bytes) else str(onnx)
        self.session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.input_hw = tuple(d if isinstance(d, int) else None for d in inp.shape[2:])
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else 0  # 0: dynamic

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunks = x.split(self.batch) if self.batch else (x,)
        outs = [self.session.run(["pred", "proto"], {self.input_name: c.contiguous().numpy()}) for c in chunks]
        return (torch.from_numpy(np.concatenate([o[0] for o in outs])),
                torch.from_numpy(np.concatenate([o[1] for o in outs])))


class Predictor:
    """A backend plus the settings that turn its outputs into detections.

    ``model``: a cocoseg segmentation model (forward -> ``RawOutputs``; run by a
    :class:`TorchBackend` on ``device`` in ``precision``) or a :class:`Backend` (ONNX Runtime,
    TensorRT: ``device`` and ``precision`` are then the backend's own); ``imgsz``: square input
    side (multiple of 32); ``conf`` / ``iou`` / ``max_det`` / ``multi_label``: NMS (predict
    defaults; :meth:`for_evaluation` gives the evaluation ones).
    """

    def __init__(self, model: torch.nn.Module | Backend, *, class_names: Sequence[str], imgsz: int = 640,
                 conf: float = 0.25, iou: float = 0.7, max_det: int = 300, multi_label: bool = False,
                 device: str | torch.device | None = None, precision: str = "fp32") -> None:
        if imgsz % 32 or imgsz <= 0:
            raise UserError(f"imgsz {imgsz} is not a positive multiple of 32")
        self.backend: Backend = (TorchBackend(model, device=device, precision=precision)
                                 if isinstance(model, torch.nn.Module) else model)
        fixed_hw = getattr(self.backend, "input_hw", ())
        if any(d not in (None, imgsz) for d in fixed_hw):
            raise UserError(f"imgsz {imgsz}: the {self.backend.name} graph takes a fixed {fixed_hw} input")
        self.class_names = list(class_names)
        self.imgsz, self.conf, self.iou, self.max_det, self.multi_label = imgsz, conf, iou, max_det, multi_label

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def model(self) -> torch.nn.Module:
        """The eager model (torch backend only)."""
        if not isinstance(self.backend, TorchBackend):
            raise AttributeError(f"a {self.backend.name} predictor has no eager model")
        return self.backend.model

    @classmethod
    def load(cls, weights: str, *, imgsz: int = 0, device: str = "cpu", **kwargs: Any) -> Predictor:
        """From a checkpoint folder (local / ``s3://``) or ``models:/NAME@ALIAS``; ``imgsz`` 0 = the card's."""
        from cocoseg.model.weights import load_checkpoint

        model, card = load_checkpoint(resolve_weights(weights), device=device)
        return cls(model, class_names=card.class_names, imgsz=imgsz or int(card.imgsz), device=device, **kwargs)

    def with_settings(self, **settings: Any) -> Predictor:
        """The same backend with other ``imgsz`` / ``conf`` / ``iou`` / ``max_det`` / ``multi_label``."""
        now = {"imgsz": self.imgsz, "conf": self.conf, "iou": self.iou, "max_det": self.max_det,
               "multi_label": self.multi_label}
        unknown = set(settings) - set(now)
        if unknown:
            raise TypeError(f"unknown predictor settings {sorted(unknown)}")
        return Predictor(self.backend, class_names=self.class_names, **{**now, **settings})

    def for_evaluation(self, protocol: Protocol | None = None) -> Predictor:
        """The same backend with the evaluation protocol's NMS settings (conf 0.001, multi-label, ...)."""
        p = protocol or Protocol(imgsz=self.imgsz)
        return self.with_settings(imgsz=p.imgsz, conf=p.conf, iou=p.iou, max_det=p.max_det,
                                  multi_label=p.multi_label)

    @property
    def protocol(self) -> Protocol:
        return Protocol(imgsz=self.imgsz, conf=self.conf, iou=self.iou, max_det=self.max_det,
                        multi_label=self.multi_label)

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, LetterboxParams]:
        """(h, w, 3) uint8 -> the (S, S, 3) letterboxed input and its geometry."""
        return letterbox(rgb, (self.imgsz, self.imgsz))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) uint8 letterboxed inputs -> fp32 decoded outputs ``(pred, proto)`` (the backend's)."""
        x = images.to(self.device, non_blocking=True).float() / 255.0  # uint8 crosses to the device: 4x fewer bytes
        return self.backend(x)

    def detect(self, images: torch.Tensor, letterboxes: Sequence[LetterboxParams], *,
               masks: str = "full") -> list[Detections]:
        """Letterboxed (B, 3, S, S) uint8 inputs and their geometry -> detections in original pixels.

        ``masks``: ``full`` (dense (n, h0, w0) bool on CPU), ``rle`` (COCO compressed RLEs),
        ``rle_counts`` (the same, uncompressed) or ``none``.
        """
        pred, proto = self.forward(images)
        return self.postprocess(pred, proto, letterboxes, masks=masks)

    def postprocess(self, pred: torch.Tensor, proto: torch.Tensor, letterboxes: Sequence[LetterboxParams], *,
                    masks: str = "full") -> list[Detections]:
        """Decoded outputs ``pred`` (B, 4 + nc + 32, A), ``proto`` (B, 32, S/4, S/4) float (the
        backend's, through :meth:`forward`) -> this predictor's detections (NMS settings, masks),
        on CPU, in original pixels."""
        dets = postprocess(pred, proto, letterboxes=letterboxes, conf=self.conf, iou=self.iou,
                           max_det=self.max_det, multi_label=self.multi_label, masks=masks)
        return [Detections(d.boxes_xyxy.cpu(), d.scores.cpu(), d.classes.cpu(),
                           d.masks.cpu() if d.masks is not None else None, d.masks_rle) for d in dets]

    def predict(self, images: Sequence[np.ndarray], *, masks: str = "full") -> list[Detections]:
        """Decoded (h, w, 3) uint8 RGB images -> one :class:`Detections` each, original pixels."""
        if not len(images):
            return []
        prepared = [self.prepare(np.asarray(rgb)) for rgb in images]
        batch = torch.from_numpy(np.stack([p[0] for p in prepared])).permute(0, 3, 1, 2)
        return self.detect(batch, [p[1] for p in prepared], masks=masks)

    def letterboxes_for(self, orig_hw: Sequence[tuple[int, int]]) -> list[LetterboxParams]:
        """The geometry of images of these sizes letterboxed by :meth:`prepare` (the val preset's rule)."""
        return [letterbox_params((int(h), int(w)), (self.imgsz, self.imgsz)) for h, w in orig_hw]


def detections_record(det: Detections, class_names: Sequence[str], *, digits: int = 2) -> dict[str, Any]:
    """Column form of one image's detections (what predict JSON and infer Parquet rows hold):
    ``boxes_xyxy`` (original pixels), ``scores``, ``classes``, ``class_names``, ``masks_rle``."""
    classes = [int(c) for c in det.classes.tolist()]
    rles = det.masks_rle if det.masks_rle is not None else (masks_to_rle(det.masks) if det.masks is not None else [])
    return {"boxes_xyxy": [[round(float(v), digits) for v in box] for box in det.boxes_xyxy.tolist()],
            "scores": [round(float(s), 5) for s in det.scores.tolist()], "classes": classes,
            "class_names": [class_names[c] if c < len(class_names) else str(c) for c in classes],
            "masks_rle": list(rles)}


def read_image(uri: str) -> np.ndarray:
    """An image file (local or ``s3://``) -> upright (h, w, 3) uint8; :class:`ImageReadError` if unreadable."""
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError, storage.StorageError) as exc:
        raise ImageReadError(f"{uri}: cannot read image: {exc}") from None
    return decode_image(data, name=uri)


# ------------------------------------------------------------------ batch inference (Ray Data)

DETECTION_COLUMNS = ("image_id", "height", "width", "boxes_xyxy", "scores", "classes", "masks_rle")


class DetectBatch:
    """``map_batches`` callable (one per actor): snapshot rows -> one row of detections per image.

    Letterboxes the rows exactly as training validation does (the ``val`` preset of
    :class:`cocoseg.data.stage.AugmentBatch`, EXIF not applied), runs the predictor under
    ``protocol`` and returns a pyarrow Table with :data:`DETECTION_COLUMNS`: boxes flattened
    (n * 4 floats, original pixels), masks as COCO RLE ``counts`` strings. No pixels leave the actor.
    """

    def __init__(self, *, weights: str, protocol: dict[str, Any], num_classes: int, device: str = "cpu",
                 threads: int = 1) -> None:
        from cocoseg.data.stage import AugmentBatch

        torch.set_num_threads(threads)
        self.protocol = Protocol(**protocol)
        self.predictor = Predictor.load(weights, device=device).for_evaluation(self.protocol)
        self.stage = AugmentBatch(preset="val", imgsz=self.protocol.imgsz, seed=0, epoch=0, num_classes=num_classes)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from cocoseg.data.collate import collate_val

        vb = collate_val(self.stage(batch))
        sizes = [(int(h), int(w)) for h, w in vb.orig_hw.tolist()]
        dets = self.predictor.detect(vb.images, self.predictor.letterboxes_for(sizes), masks="rle")
        return pa.table({
            "image_id": pa.array(vb.image_ids.tolist(), pa.int64()),
            "height": pa.array([s[0] for s in sizes], pa.int32()), "width": pa.array([s[1] for s in sizes], pa.int32()),
            "boxes_xyxy": pa.array([d.boxes_xyxy.flatten().tolist() for d in dets], pa.list_(pa.float32())),
            "scores": pa.array([d.scores.tolist() for d in dets], pa.list_(pa.float32())),
            "classes": pa.array([d.classes.tolist() for d in dets], pa.list_(pa.int32())),
            "masks_rle": pa.array([[r["counts"] for r in d.masks_rle] for d in dets], pa.list_(pa.string())),
        })


def detections_from_row(row: dict[str, Any]) -> Detections:
    """One row of :class:`DetectBatch` output -> :class:`Detections` (masks as RLE)."""
    size = [int(row["height"]), int(row["width"])]
    boxes = torch.tensor(np.asarray(row["boxes_xyxy"], np.float32).reshape(-1, 4))
    return Detections(boxes, torch.tensor(np.asarray(row["scores"], np.float32)),
                      torch.tensor(np.asarray(row["classes"], np.int64)),
                      masks_rle=[{"size": size, "counts": c} for c in row["masks_rle"]])


def prediction_schema() -> Any:
    """The pyarrow schema of one batch-inference row (``pipelines.infer``): ``source_uri``,
    ``width`` / ``height`` (upright image, pixels), ``boxes_xyxy`` (n x 4, original pixels),
    ``scores``, ``classes``, ``class_names``, ``masks_rle`` (COCO compressed RLE ``counts`` strings,
    size ``[height, width]``) and ``error`` (null when the image was predicted; then the
    other columns except ``source_uri`` are null)."""
    import pyarrow as pa

    return pa.schema([("source_uri", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                      ("boxes_xyxy", pa.list_(pa.list_(pa.float32(), 4))), ("scores", pa.list_(pa.float32())),
                      ("classes", pa.list_(pa.int32())), ("class_names", pa.list_(pa.string())),
                      ("masks_rle", pa.list_(pa.string())), ("error", pa.string())])


class PredictImages:
    """``map_batches`` callable (one per actor): encoded image files -> one prediction row each.

    Input columns: ``source_uri``, ``data`` (the file's bytes, null when it could not be read),
    ``error`` (why it could not be read, else null), plus ``passthrough`` columns copied as they
    are. Files are decoded by :func:`decode_image` (EXIF orientation applied, as ``cocoseg
    predict`` and the served model do) and run through the one :class:`Predictor` under
    ``protocol`` (predict mode: ``evaluate.predict_conf``, one label per box). Output:
    :func:`prediction_schema` plus the pass-through columns. An image that cannot be decoded or
    predicted becomes a row whose ``error`` says why: one bad file never fails the batch.
    """

    def __init__(self, *, weights: str, protocol: dict[str, Any], device: str = "cpu", threads: int = 1,
                 passthrough: Sequence[str] = ("chunk",)) -> None:
        torch.set_num_threads(threads)
        p = Protocol(**protocol)
        self.passthrough = tuple(passthrough)
        self.predictor = Predictor.load(weights, imgsz=p.imgsz, device=device, conf=p.conf, iou=p.iou,
                                        max_det=p.max_det, multi_label=p.multi_label)

    def _predict(self, images: dict[int, np.ndarray], errors: list[str | None]) -> dict[int, Detections]:
        """One batched forward; if it fails, image by image so the failure stays with its image."""
        keys = list(images)
        try:
            return dict(zip(keys, self.predictor.predict([images[k] for k in keys], masks="rle"), strict=True))
        except Exception:  # noqa: BLE001 (isolated below, per image)
            pass
        out = {}
        for k in keys:
            try:
                (out[k],) = self.predictor.predict([images[k]], masks="rle")
            except Exception as exc:  # noqa: BLE001 (recorded in the row: never a crash for one image)
                errors[k] = f"prediction failed ({type(exc).__name__}: {exc})"[:500]
        return out

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        uris = batch.column("source_uri").to_pylist()
        errors: list[str | None] = batch.column("error").to_pylist()
        images: dict[int, np.ndarray] = {}
        for i, data in enumerate(batch.column("data").to_pylist()):
            if errors[i] is None:
                try:
                    images[i] = decode_image(data or b"", name=uris[i])
                except ImageReadError as exc:
                    errors[i] = str(exc)
        dets = self._predict(images, errors)
        rows = []
        for i, uri in enumerate(uris):
            row: dict[str, Any] = {"source_uri": uri, "error": errors[i]}
            if i in dets and errors[i] is None:
                h, w = images[i].shape[:2]
                row.update(width=w, height=h, **detections_record(dets[i], self.predictor.class_names))
                row["masks_rle"] = [r["counts"] for r in row["masks_rle"]]
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=prediction_schema())
        for name in self.passthrough:
            table = table.append_column(name, batch.column(name))
        return table
