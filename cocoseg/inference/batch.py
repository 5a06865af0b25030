"""Batch inference callables for Ray Data ``map_batches`` (one per actor): snapshot rows ->
detections (the evaluate job), image files -> prediction rows (the infer job)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cocoseg.structures import Detections

from .predictor import Predictor
from .protocol import ImageReadError, Protocol, decode_image
from .records import detection_row, evaluation_schema, prediction_schema

__all__ = ["DetectBatch", "PredictImages"]


class DetectBatch:
    """``map_batches`` callable (one per actor): snapshot rows -> one row of detections per image.

    Letterboxes the rows exactly as training validation does (the ``val`` preset of
    :class:`cocoseg.data.stage.AugmentBatch`, EXIF not applied), runs the predictor under
    ``protocol`` and returns a pyarrow Table of :func:`evaluation_schema` (one detection record per
    image: boxes in original pixels as computed, masks as COCO RLE ``counts`` strings). No pixels
    leave the actor.
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
        dets = self.predictor.detect(vb.images, vb.letterboxes, masks="rle")
        names = self.predictor.class_names
        rows = [{"image_id": i, **detection_row(d, names, lb.orig_hw)}
                for i, d, lb in zip(vb.image_ids.tolist(), dets, vb.letterboxes, strict=True)]
        return pa.Table.from_pylist(rows, schema=evaluation_schema())


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
        self.predictor = Predictor.load(weights, imgsz=p.imgsz, device=device).with_protocol(p)

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
                row.update(detection_row(dets[i], self.predictor.class_names, images[i].shape[:2], digits=2))
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=prediction_schema())
        for name in self.passthrough:
            table = table.append_column(name, batch.column(name))
        return table
