"""Model size figures: parameter counts and GFLOPs (``torch.utils.flop_counter``).

GFLOPs follow the convention of spec section 13: 2 x multiply-accumulates of the
convolutions (including the prototype's transposed convolution, counted exactly), with
BatchNorm folded into the convolutions, i.e. normalisation, activations, pooling and the
element-wise additions are not counted. torch's counter counts exactly those operators, so the
figure is the same for the fused and the unfused graph. Counting runs on the ``meta`` device
by default: shapes only, no arithmetic, so the x variant at 640 costs milliseconds on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .yolov8 import build_model

__all__ = ["ModelInfo", "count_flops", "count_parameters", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    variant: str
    num_classes: int
    imgsz: int
    parameters: int  # every parameter, incl. the 16 fixed DFL weights (the reference's count)
    trainable_parameters: int
    parameters_fused: int  # after folding BatchNorm into the convolutions
    gflops: float  # at imgsz x imgsz, batch 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> int:
    """Floating-point operations of one eval-mode forward pass at (batch, 3, height, width),
    as counted by ``torch.utils.flop_counter`` (2 per multiply-accumulate).

    The input is created on the model's device; for a model on the ``meta`` device nothing is
    computed.
    """
    device = next(model.parameters()).device
    images = torch.zeros(batch, 3, height, width, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_info(variant: str, num_classes: int = 80, imgsz: int = 640) -> ModelInfo:
    """Parameter counts and GFLOPs of a variant, built on the meta device (instant)."""
    with torch.device("meta"):
        model = build_model(variant, num_classes)
        fused = build_model(variant, num_classes).fuse()
    return ModelInfo(
        variant=variant,
        num_classes=num_classes,
        imgsz=imgsz,
        parameters=count_parameters(model),
        trainable_parameters=count_parameters(model, trainable_only=True),
        parameters_fused=count_parameters(fused),
        gflops=count_flops(model, imgsz, imgsz) / 1e9,
    )
