"""Parity between the eager PyTorch model and its ONNX export (onnxruntime, CPU, float32).

``TOLERANCES`` is the one place the accepted differences are stated. An element passes when
``|onnx - eager| <= atol + rtol * |eager|`` (numpy's ``allclose`` rule):

- ``pred``: rtol 1e-3, atol 1e-3. Rows 0-3 are box coordinates in *input pixels* (up to 640),
  so the absolute term is scaled for pixels; measured max |diff| on the tiny test net was
  6e-5..1.2e-4 at 128 px (docs/export-registry-notes.md, section B).
- ``proto``: rtol 1e-3, atol 1e-4 (prototypes are O(1); measured ~1e-7).
- ``keep``: the set of (image, class, anchor) rows must be identical.

The check runs at batch 1 and, for a dynamic-batch export, at batch 2 on a fixed, seeded input,
so it also proves the dynamic axis. A failure raises :class:`ParityError` naming the output,
the batch, the worst element and the tolerance: the export is then not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .onnx import ExportError, ExportWrapper

__all__ = ["TOLERANCES", "ParityError", "ParityReport", "check_parity", "parity_input"]

TOLERANCES: dict[str, dict[str, float]] = {
    "pred": {"rtol": 1e-3, "atol": 1e-3},
    "proto": {"rtol": 1e-3, "atol": 1e-4},
}


class ParityError(ExportError):
    """The ONNX outputs differ from the eager model's beyond ``TOLERANCES``."""


@dataclass
class ParityReport:
    """Worst differences seen per output, over every batch size checked."""

    max_abs: dict[str, float]
    max_rel: dict[str, float]
    batches: list[int]
    tolerances: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "batches": self.batches,
                "tolerances": self.tolerances, "runtime": "onnxruntime CPUExecutionProvider, float32"}


def parity_input(batch: int, imgsz: int, seed: int = 0) -> torch.Tensor:
    """The fixed check input: (batch, 3, imgsz, imgsz) float32 uniform in [0, 1)."""
    return torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed))


def _session(onnx_path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2  # shared CI hosts; latency is measured elsewhere
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_parity(model: nn.Module, onnx_path: str | Path, *, num_classes: int, imgsz: int,
                 batches: tuple[int, ...] = (1, 2), nms: bool = False, nms_iou: float = 0.7,
                 nms_conf: float = 0.25) -> ParityReport:
    """Run eager and ONNX on :func:`parity_input` for each batch size; raise on a mismatch.

    ``nms*`` must equal the values the file was exported with (they are constants in the graph).
    """
    onnx_path = Path(onnx_path)
    wrapper = ExportWrapper(model.float().cpu().eval(), num_classes=num_classes, nms=nms,
                            nms_iou=nms_iou, nms_conf=nms_conf).eval()
    sess = _session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    max_abs: dict[str, float] = {}
    max_rel: dict[str, float] = {}
    for batch in batches:
        x = parity_input(batch, imgsz)
        with torch.no_grad():
            eager = [t.numpy() for t in wrapper(x)]
        try:
            got = sess.run(None, {"images": x.numpy()})
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
            raise ParityError(f"{onnx_path}: onnxruntime failed at batch {batch}: {exc}") from None
        for name, ref, out in zip(names, eager, got, strict=True):
            if name == "keep":
                _compare_keep(onnx_path, batch, ref, out)
                continue
            abs_err, rel_err = _compare(onnx_path, name, batch, ref, out)
            max_abs[name] = max(max_abs.get(name, 0.0), abs_err)
            max_rel[name] = max(max_rel.get(name, 0.0), rel_err)
    return ParityReport(max_abs=max_abs, max_rel=max_rel, batches=list(batches), tolerances=TOLERANCES)


def _compare(path: Path, name: str, batch: int, ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    if ref.shape != out.shape:
        raise ParityError(f"{path}: output {name!r} at batch {batch} has shape {out.shape}, "
                          f"the eager model gives {ref.shape}")
    tol = TOLERANCES[name]
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    bound = tol["atol"] + tol["rtol"] * np.abs(ref)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    if not np.all(diff <= bound):  # also catches NaN
        worst = np.unravel_index(int(np.nanargmax(diff - bound)), diff.shape)
        raise ParityError(
            f"{path}: output {name!r} differs from the eager model at batch {batch}: at index "
            f"{tuple(int(i) for i in worst)} onnx={out[worst]:.6g} eager={ref[worst]:.6g} "
            f"(|diff|={diff[worst]:.3g} > atol {tol['atol']} + rtol {tol['rtol']} * |eager|); "
            f"max |diff| {float(np.nanmax(diff)):.3g}")
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0))


def _compare_keep(path: Path, batch: int, ref: np.ndarray, out: np.ndarray) -> None:
    want = {tuple(r) for r in ref.reshape(-1, 3).tolist()}
    have = {tuple(r) for r in out.reshape(-1, 3).tolist()}
    if want != have:
        raise ParityError(f"{path}: in-graph NMS kept {len(have)} boxes at batch {batch}, the eager "
                          f"reference {len(want)}; {len(want ^ have)} rows differ")
