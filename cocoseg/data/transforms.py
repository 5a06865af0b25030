"""Pure image transforms shared by inference, evaluation and augmentation.

``letterbox`` follows spec 8.5: gain ``r = min(H / h0, W / w0)`` (capped at 1 when ``scaleup``
is False, as in validation), bilinear resize to ``round(w0 r) x round(h0 r)``, padding split as
``left = round(dw / 2 - 0.1)``, ``right = round(dw / 2 + 0.1)`` (same for top/bottom), filled
with grey 114. The returned ``ratio_pad = (r, (left, top))`` is what
``cocoseg.model.postprocess`` needs to map boxes and masks back to the original image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["FILL_VALUE", "letterbox"]

FILL_VALUE = 114


def letterbox(image: np.ndarray, new_hw: tuple[int, int], *, scaleup: bool = True,
              fill: int = FILL_VALUE) -> tuple[np.ndarray, tuple[float, tuple[float, float]]]:
    """Resize and pad an (h0, w0, 3) uint8 RGB image to ``new_hw`` keeping its aspect ratio.

    Returns the (H, W, 3) uint8 image and ``(gain, (pad_left, pad_top))`` in pixels.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects an (h, w, 3) uint8 image, got {image.shape} {image.dtype}")
    h0, w0 = image.shape[:2]
    height, width = new_hw
    gain = min(height / h0, width / w0)
    if not scaleup:
        gain = min(gain, 1.0)
    new_w, new_h = round(w0 * gain), round(h0 * gain)
    if (new_w, new_h) != (w0, h0):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    dw, dh = width - new_w, height - new_h
    left, top = round(dw / 2 - 0.1), round(dh / 2 - 0.1)
    out = np.full((height, width, image.shape[2]), fill, dtype=np.uint8)
    out[top:top + new_h, left:left + new_w] = image
    return out, (gain, (float(left), float(top)))
