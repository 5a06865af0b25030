"""``onnx-int8``: the exported ONNX statically quantized to INT8 with ONNX Runtime (QDQ format).

Calibration: ``count`` images drawn with ``numpy.random.default_rng(seed)`` from a snapshot's
train split (never the split the gate evaluates on), decoded and letterboxed to the export size
like the predictor's input, ``[0, 1]`` float; their image ids go into the export's manifest and
model card. Activations are calibrated MinMax, unsigned 8-bit per tensor; weights signed 8-bit
per output channel (ONNX Runtime's U8S8 for x86 CPUs). ``exclude``: node-name substrings or
:data:`PRESETS` kept in float (default ``decode``, docs/promotion.md); the graph is pre-processed with
ONNX Runtime's ``quant_pre_process`` (shape inference, optimisation) first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cocoseg import bundle
from cocoseg.utils import get_logger

from .onnx import ExportError

__all__ = ["PRESETS", "calibration_batch", "quantize_int8"]

log = get_logger(__name__)

# Named groups for export.int8_exclude (node names of the torchscript export):
# - "decode": every node outside the network proper (not under "/model/"): the wrapper's DFL softmax,
#   box decode, sigmoid and the output concat. That concat puts box coordinates in pixels next to
#   class scores in [0, 1]; one 8-bit scale for both rounds every score to 0 (measured: mask AP
#   0.674 -> 0.000 with the whole graph quantized, docs/promotion.md). The default.
# - "head-final": the head's last 1x1 convolutions of every level (box distribution cv2.i.2, class
#   logits cv3.i.2, mask coefficients cv4.i.2), the usual accuracy suspects.
PRESETS = {"decode": lambda nodes: [n for n in nodes if not n.startswith("/model/")],
           "head-final": lambda nodes: [n for n in nodes
                                        if any(f"/cv{k}.{i}/cv{k}.{i}.2/" in n for k in (2, 3, 4) for i in range(3))]}

def calibration_batch(snapshot: str, *, count: int, seed: int, imgsz: int,
                      split: str = "train") -> tuple[list[int], np.ndarray]:
    """(image ids, (n, 3, imgsz, imgsz) float32 in [0, 1]) of ``count`` seeded draws from ``split``."""
    from cocoseg.data.letterbox import letterbox
    from cocoseg.data.schema import iter_split_batches, read_split_table
    from cocoseg.inference import decode_image

    ids = read_split_table(snapshot, split, columns=["image_id"]).column("image_id").to_pylist()
    if not ids:
        raise ExportError(f"onnx-int8: snapshot {snapshot} has no {split!r} images to calibrate on")
    chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(ids, size=min(count, len(ids)), replace=False))
    wanted, images = set(chosen), {}
    for table in iter_split_batches(snapshot, split, columns=["image_id", "image"], batch_rows=64):
        for image_id, data in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist(), strict=True):
            if image_id in wanted:
                rgb, _ = letterbox(decode_image(data, name=f"{split} image {image_id}"), (imgsz, imgsz))
                images[image_id] = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    return chosen, np.stack([images[i] for i in chosen])


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol: one ``{"images": (1, 3, S, S)}`` feed at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.i = images, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {"images": self.images[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize_int8(fp32: str | Path, out: str | Path, images: np.ndarray, *,
                  exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Write the QDQ INT8 graph of ``fp32`` to ``out``; returns its facts for the model card."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, out = Path(fp32), Path(out)
    pre = out.with_name(f".{out.name}.pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        nodes = [n.name for n in onnx.load(str(pre)).graph.node]
        excluded = sorted({n for e in exclude for n in (PRESETS[e](nodes) if e in PRESETS else
                                                         [m for m in nodes if e and e in m])})
        unmatched = [e for e in exclude if e not in PRESETS and not any(e in n for n in nodes)]
        if unmatched:
            raise ExportError(f"export.int8_exclude: {unmatched} match no node of {fp32.name} "
                              f"(node names look like {nodes[:3]})")
        quantize_static(str(pre), str(out), _Reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded or None, calibrate_method=CalibrationMethod.MinMax)
    finally:
        pre.unlink(missing_ok=True)
        for extra in out.parent.glob(f".{out.name}.pre*"):
            extra.unlink(missing_ok=True)
    log.info("onnx-int8: %s from %d calibration images, %d node(s) kept in float", out.name, len(images),
             len(excluded))
    return {"file": out.name, "quant_format": "QDQ", "activations": "uint8 per tensor (MinMax)",
            "weights": "int8 per channel", "calibration_images": int(len(images)), "excluded_nodes": excluded,
            "exclude_patterns": list(exclude), "sha256": bundle.sha256_file(out)}
