"""What runs the network for a :class:`~cocoseg.inference.Predictor`: eager torch or ONNX
Runtime (TensorRT's is ``cocoseg.export.tensorrt.TensorRTBackend``), all returning the export's
decoded ``pred`` / ``proto``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol as TypingProtocol

import numpy as np
import torch

from cocoseg.model.postprocess import decode
from cocoseg.utils import UserError

__all__ = ["Backend", "OnnxBackend", "TorchBackend"]


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
