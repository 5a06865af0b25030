"""ONNX export of a YOLOv8-seg model with a fixed, documented I/O signature.

The exported graph (``IO_SIGNATURE``):

- input ``images``: (B, 3, H, W) float32 RGB in [0, 1] (letterboxed, already divided by 255).
  B is dynamic (1..``max_batch``); H and W are static (= ``imgsz``) unless ``dynamic_hw``, in
  which case they are dynamic and must be multiples of 32 at run time.
- output ``pred``: (B, 4 + nc + 32, A) float32, the eval-mode prediction: rows 0-3 the box as
  (cx, cy, w, h) in input pixels, rows 4..4+nc-1 sigmoid class probabilities, the last 32 rows raw
  mask coefficients; A = (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32) anchors, P3 -> P5 row-major.
- output ``proto``: (B, 32, H/4, W/4) float32 mask prototypes.
- output ``keep`` (only with ``nms=True``): (K, 3) int64 rows ``[image, class, anchor]`` chosen by
  ONNX ``NonMaxSuppression`` (class-aware, centre-format boxes, score and IoU thresholds baked
  in as constants). The eager twin of that operator is :func:`nms_reference`, which runs the
  one torch NMS (:func:`cocoseg.model.postprocess.nms`) per image and class; the parity check
  and ``tests/test_export.py`` compare the graph's ``keep`` with it.

The model contract is the one of ``cocoseg.model``: ``model(images)`` returns
:class:`~cocoseg.structures.RawOutputs`; :class:`ExportWrapper` puts the one decoding
(:func:`cocoseg.model.decode.decode`) into the graph, so ``pred`` and ``proto`` are the eager
``decode(model(images))``.

We use the TorchScript exporter by default: it writes one self-contained file (weights
embedded) in ~0.3 s and supports the custom ``NonMaxSuppression`` symbolic. The dynamo
exporter (torch's default since 2.9) is available as ``exporter="dynamo"`` when ``onnxscript``
is installed; we then pass ``external_data=False`` so the weights are still embedded.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from cocoseg.model.decode import decode
from cocoseg.model.postprocess import nms
from cocoseg.structures import RawOutputs
from cocoseg.utils import UserError, get_logger

__all__ = [
    "IO_SIGNATURE",
    "ExportError",
    "ExportWrapper",
    "OnnxExport",
    "export_onnx",
    "nms_reference",
    "slim_onnx",
]

log = get_logger(__name__)

IO_SIGNATURE: dict[str, Any] = {
    "inputs": {"images": "float32 (B, 3, H, W), RGB in [0, 1]"},
    "outputs": {
        "pred": "float32 (B, 4 + nc + 32, A): cx, cy, w, h (input px), class probs, mask coeffs",
        "proto": "float32 (B, 32, H/4, W/4): mask prototypes",
        "keep": "int64 (K, 3): [image, class, anchor] after NMS (only when exported with nms=true)",
    },
}


class ExportError(UserError):
    """The export cannot be produced (bad model, bad settings, missing exporter dependency)."""


class _NonMaxSuppression(torch.autograd.Function):
    """Eager: :func:`nms_reference`. Exported: one ONNX ``NonMaxSuppression`` node."""

    @staticmethod
    def forward(ctx, boxes_cxcywh, scores, max_per_class, iou_threshold, score_threshold):
        if torch.jit.is_tracing():
            # The exporter replaces this node by `symbolic`; skip the slow Python loop while tracing.
            return torch.zeros((0, 3), dtype=torch.int64)
        return nms_reference(boxes_cxcywh, scores, int(max_per_class), float(iou_threshold),
                             float(score_threshold))

    @staticmethod
    def symbolic(g, boxes_cxcywh, scores, max_per_class, iou_threshold, score_threshold):
        # center_point_box=1: boxes are (cx, cy, w, h), exactly rows 0-3 of `pred`.
        return g.op("NonMaxSuppression", boxes_cxcywh, scores, max_per_class, iou_threshold,
                    score_threshold, center_point_box_i=1)


def nms_reference(boxes_cxcywh: torch.Tensor, scores: torch.Tensor, max_per_class: int,
                  iou_threshold: float, score_threshold: float) -> torch.Tensor:
    """Eager twin of ONNX ``NonMaxSuppression`` (center_point_box=1), through the one torch NMS
    (:func:`cocoseg.model.postprocess.nms`).

    ``boxes_cxcywh``: (B, A, 4) pixels; ``scores``: (B, C, A). Returns (K, 3) int64 rows
    ``[image, class, anchor]``: per image and class, greedy NMS over anchors with score strictly
    above ``score_threshold`` in descending score order, suppressing IoU > ``iou_threshold``,
    at most ``max_per_class`` kept. Rows come image-major, then class, then descending score.
    """
    half = boxes_cxcywh[..., 2:] / 2
    xyxy = torch.cat([boxes_cxcywh[..., :2] - half, boxes_cxcywh[..., :2] + half], dim=-1)
    rows = [torch.zeros((0, 3), dtype=torch.int64)]
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            cand = torch.nonzero(scores[b, c] > score_threshold).flatten()
            kept = cand[nms(xyxy[b, cand], scores[b, c, cand], iou_threshold, max_keep=max_per_class)]
            rows.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], 1))
    return torch.cat(rows).to(torch.int64)


class ExportWrapper(nn.Module):
    """Fixes the graph's I/O: ``images`` -> ``pred``, ``proto`` (and ``keep`` with NMS).

    ``model`` returns :class:`RawOutputs`; the wrapper decodes them (:func:`decode`).
    ``num_classes`` is needed only to slice the class rows of ``pred`` for in-graph NMS.
    """

    def __init__(self, model: nn.Module, *, num_classes: int, nms: bool = False,
                 nms_iou: float = 0.7, nms_conf: float = 0.25, nms_max_per_class: int = 100):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.nms = nms
        self.nms_iou = nms_iou
        self.nms_conf = nms_conf
        self.nms_max_per_class = nms_max_per_class

    def forward(self, images: torch.Tensor):
        pred, proto = decode(self.model(images))
        if not self.nms:
            return pred, proto
        boxes = pred[:, :4].transpose(1, 2)  # (B, A, 4) cx, cy, w, h
        scores = pred[:, 4:4 + self.num_classes]  # (B, nc, A)
        keep = _NonMaxSuppression.apply(
            boxes, scores, torch.tensor([self.nms_max_per_class], dtype=torch.int64),
            torch.tensor([self.nms_iou], dtype=torch.float32),
            torch.tensor([self.nms_conf], dtype=torch.float32))
        return pred, proto, keep


@dataclass
class OnnxExport:
    """What :func:`export_onnx` produced (goes into the model card's ``export.onnx``)."""

    path: Path
    opset: int
    exporter: str
    input_shape: list[Any]  # e.g. ["batch", 3, 640, 640]
    output_names: list[str]
    nms: bool
    simplified: bool = False
    nodes: int = 0
    nodes_before_slim: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path.name, "opset": self.opset, "exporter": self.exporter,
                "input_shape": self.input_shape, "output_names": self.output_names, "nms": self.nms,
                "simplified": self.simplified, "nodes": self.nodes,
                "nodes_before_slim": self.nodes_before_slim, "seconds": round(self.seconds, 3),
                "notes": self.notes, "io_signature": IO_SIGNATURE}


def _check_contract(wrapper: ExportWrapper, sample: torch.Tensor) -> None:
    """Fail early, in words, when the model does not follow the RawOutputs contract."""
    with torch.no_grad():
        out = wrapper.model(sample)
        if not isinstance(out, RawOutputs):
            raise ExportError(f"the model's output must be cocoseg.structures.RawOutputs, got {type(out).__name__}")
        pred, proto = decode(out)
    b, _, h, w = sample.shape
    want_rows = 4 + wrapper.num_classes + 32
    if pred.ndim != 3 or pred.shape[0] != b or pred.shape[1] != want_rows:
        raise ExportError(f"pred has shape {tuple(pred.shape)}, expected ({b}, {want_rows}, A) for "
                          f"{wrapper.num_classes} classes")
    if tuple(proto.shape) != (b, 32, h // 4, w // 4):
        raise ExportError(f"proto has shape {tuple(proto.shape)}, expected ({b}, 32, {h // 4}, {w // 4})")


def export_onnx(model: nn.Module, path: str | Path, *, num_classes: int, imgsz: int = 640,
                opset: int = 18, dynamic_batch: bool = True, dynamic_hw: bool = False,
                max_batch: int = 16, nms: bool = False, nms_iou: float = 0.7, nms_conf: float = 0.25,
                exporter: str = "torchscript") -> OnnxExport:
    """Export ``model`` (any module following the eval-mode contract) to one ONNX file.

    The model is put in eval mode and run on CPU in float32. The file is checked with
    ``onnx.checker`` and must not reference external data. Simplification and parity are
    separate steps (:func:`slim_onnx`, ``cocoseg.export.parity``).
    """
    if opset < 18:
        raise ExportError(f"opset {opset} is not supported: use 18 or later")
    if imgsz % 32:
        raise ExportError(f"imgsz must be a multiple of 32, got {imgsz}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    wrapper = ExportWrapper(model, num_classes=num_classes, nms=nms, nms_iou=nms_iou,
                            nms_conf=nms_conf).eval()
    sample = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    _check_contract(wrapper, sample)
    outputs = ["pred", "proto", "keep"] if nms else ["pred", "proto"]
    start = time.perf_counter()
    if exporter == "torchscript":
        _export_torchscript(wrapper, sample, path, opset, dynamic_batch, dynamic_hw, outputs)
    elif exporter == "dynamo":
        _export_dynamo(wrapper, sample, path, opset, dynamic_batch, dynamic_hw, max_batch, nms, outputs)
    else:
        raise ExportError(f"unknown exporter {exporter!r}: use 'torchscript' or 'dynamo'")
    seconds = time.perf_counter() - start
    proto = onnx.load(str(path), load_external_data=False)
    _check_embedded(proto, path)
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    log.info("exported %s (%s exporter, opset %d, input %s) in %.1f s", path, exporter, opset, shape, seconds)
    return OnnxExport(path=path, opset=opset, exporter=exporter, input_shape=shape, output_names=outputs,
                      nms=nms, nodes=len(proto.graph.node), nodes_before_slim=len(proto.graph.node),
                      seconds=seconds)


def _dynamic_axes(dynamic_batch: bool, dynamic_hw: bool, outputs: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {"images": {}, "pred": {}, "proto": {}}
    if dynamic_batch:
        for name in axes:
            axes[name][0] = "batch"
    if dynamic_hw:
        axes["images"].update({2: "height", 3: "width"})
        axes["pred"][2] = "anchors"
        axes["proto"].update({2: "proto_height", 3: "proto_width"})
    if "keep" in outputs:
        axes["keep"] = {0: "detections"}
    return {k: v for k, v in axes.items() if v}


def _export_torchscript(wrapper, sample, path, opset, dynamic_batch, dynamic_hw, outputs) -> None:
    if opset > 20:
        raise ExportError(f"the torchscript exporter writes opset 18..20, not {opset}; use exporter=dynamo")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch 2.9+; it still is the only one that
        # writes a custom NonMaxSuppression symbolic without onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (sample,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=outputs,
                          dynamic_axes=_dynamic_axes(dynamic_batch, dynamic_hw, outputs) or None)


def _export_dynamo(wrapper, sample, path, opset, dynamic_batch, dynamic_hw, max_batch, nms, outputs) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("export.exporter=dynamo needs the 'onnxscript' package; install it or use "
                          "export.exporter=torchscript") from None
    if nms:
        raise ExportError("export.nms=true is implemented for export.exporter=torchscript only")
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=max_batch)
    if dynamic_hw:
        # Derived dims keep H and W multiples of 32 (the stride of P5).
        dims[2] = 32 * torch.export.Dim("h32", min=1, max=64)
        dims[3] = 32 * torch.export.Dim("w32", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (sample,), str(path), dynamo=True, opset_version=opset,
                          input_names=["images"], output_names=outputs,
                          dynamic_shapes={"images": dims} if dims else None,
                          external_data=False)


def _check_embedded(proto: onnx.ModelProto, path: Path) -> None:
    external = [t.name for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"{path}: {len(external)} initializers are stored as external data "
                          f"(e.g. {external[0]}); the export must embed its weights in one file")


def slim_onnx(src: str | Path, dst: str | Path) -> int:
    """Simplify ``src`` with onnxslim into ``dst``; returns the node count of the result."""
    import onnxslim

    slim = onnxslim.slim(onnx.load(str(src)))
    onnx.save(slim, str(dst))
    return len(slim.graph.node)
