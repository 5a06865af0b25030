"""A PNG of validation images with predicted masks and boxes, logged with each epoch."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from cocoseg.model.postprocess import postprocess

__all__ = ["render_predictions"]

_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                     (70, 240, 240), (240, 50, 230), (210, 245, 60)], dtype=np.float32)


def render_predictions(images: torch.Tensor, pred: torch.Tensor, proto: torch.Tensor,
                       class_names: Sequence[str], conf: float = 0.25) -> bytes:
    """PNG bytes of up to 4 images side by side with their detections drawn on.

    ``images`` (B, 3, H, W) uint8 letterboxed network inputs; ``pred``/``proto`` the eval-mode
    outputs for them. Detections are kept in the network-input frame (no inverse letterbox), at
    predict-mode settings (``conf``, one label per box).
    """
    hw = tuple(images.shape[2:])
    detections = postprocess(pred, proto, input_hw=hw, orig_hw=[hw] * images.shape[0],
                             ratio_pads=[(1.0, (0.0, 0.0))] * images.shape[0], conf=conf, multi_label=False)
    tiles = []
    for image, det in zip(images, detections, strict=True):
        canvas = image.permute(1, 2, 0).numpy().astype(np.float32)
        for mask, cls in zip(det.masks.numpy(), det.classes.tolist(), strict=True):
            canvas[mask] = 0.5 * canvas[mask] + 0.5 * _PALETTE[cls % len(_PALETTE)]
        tile = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(tile)
        for box, cls, score in zip(det.boxes_xyxy.tolist(), det.classes.tolist(), det.scores.tolist(), strict=True):
            colour = tuple(int(c) for c in _PALETTE[cls % len(_PALETTE)])
            draw.rectangle(box, outline=colour, width=1)
            name = class_names[cls] if cls < len(class_names) else str(cls)
            draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=colour)
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), (0, 0, 0))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()
