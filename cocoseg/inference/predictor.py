"""The one predictor: a backend plus the settings that turn its outputs into detections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from cocoseg.data.letterbox import letterbox
from cocoseg.model.postprocess import postprocess
from cocoseg.structures import Detections, LetterboxParams
from cocoseg.utils import UserError

from .backends import Backend, TorchBackend
from .protocol import EVALUATE, PREDICT, Protocol, resolve_weights

__all__ = ["Predictor"]


class Predictor:
    """A backend plus the settings that turn its outputs into detections.

    ``model``: a cocoseg segmentation model (forward -> ``RawOutputs``; run by a
    :class:`TorchBackend` on ``device`` in ``precision``) or a :class:`Backend` (ONNX Runtime,
    TensorRT: ``device`` and ``precision`` are then the backend's own); ``imgsz``: square input
    side (multiple of 32); ``conf`` / ``iou`` / ``max_det`` / ``multi_label``: NMS (by default
    the :data:`~cocoseg.inference.protocol.PREDICT` preset's; :meth:`for_evaluation` gives the
    :data:`~cocoseg.inference.protocol.EVALUATE` ones).
    """

    def __init__(self, model: torch.nn.Module | Backend, *, class_names: Sequence[str], imgsz: int = PREDICT.imgsz,
                 conf: float = PREDICT.conf, iou: float = PREDICT.iou, max_det: int = PREDICT.max_det,
                 multi_label: bool = PREDICT.multi_label, device: str | torch.device | None = None,
                 precision: str = "fp32") -> None:
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
    def load(cls, weights: str, *, imgsz: int = 0, device: str = "cpu", fuse: bool = True, **kwargs: Any) -> Predictor:
        """From a checkpoint folder (local / ``s3://``) or ``models:/NAME@ALIAS``; ``imgsz`` 0 = the card's.

        ``fuse``: fold every BatchNorm into its convolution first, as the reference's validator
        does: about 10 % less CPU time per forward (docs/inference.md), outputs equal up to float
        rounding. Every job that loads weights to predict (evaluate, infer, predict, the served
        eager backend) goes through here, so they all run the same fused network."""
        from cocoseg.model.weights import load_checkpoint

        model, card = load_checkpoint(resolve_weights(weights), device=device)
        if fuse:
            model.fuse()
        return cls(model, class_names=card.class_names, imgsz=imgsz or int(card.imgsz), device=device, **kwargs)

    def with_settings(self, **settings: Any) -> Predictor:
        """The same backend with other ``imgsz`` / ``conf`` / ``iou`` / ``max_det`` / ``multi_label``."""
        now = {"imgsz": self.imgsz, "conf": self.conf, "iou": self.iou, "max_det": self.max_det,
               "multi_label": self.multi_label}
        unknown = set(settings) - set(now)
        if unknown:
            raise TypeError(f"unknown predictor settings {sorted(unknown)}")
        return Predictor(self.backend, class_names=self.class_names, **{**now, **settings})

    def with_protocol(self, p: Protocol) -> Predictor:
        """The same backend under protocol ``p`` (its imgsz and NMS settings)."""
        return self.with_settings(imgsz=p.imgsz, conf=p.conf, iou=p.iou, max_det=p.max_det,
                                  multi_label=p.multi_label)

    def for_evaluation(self, protocol: Protocol | None = None) -> Predictor:
        """The same backend under ``protocol``, by default :data:`EVALUATE` at this imgsz (conf 0.001, multi-label)."""
        return self.with_protocol(protocol or replace(EVALUATE, imgsz=self.imgsz))

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

