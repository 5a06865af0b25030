"""Letterbox (spec 8.5) and its inverse: pure functions over numpy arrays.

Coordinates are continuous pixels (pixel ``i`` spans ``[i, i+1)``). A point ``p`` of the original
image maps to ``p * gain + pad`` in the letterboxed image and back with ``(q - pad) / gain``;
``pad`` is ``(pad_left, pad_top)`` in pixels of the letterboxed image.
"""

from __future__ import annotations

import numpy as np

from cocoseg.data.decode import resize_rgb
from cocoseg.structures import LetterboxParams, letterbox_params  # the one definition of the geometry

__all__ = ["FILL", "LetterboxParams", "letterbox", "letterbox_params", "to_original_boxes",
           "to_original_points"]

FILL = 114  # grey used for padding and affine borders (spec 1)


def letterbox(image: np.ndarray, out_hw: tuple[int, int], *, scaleup: bool = True,
              params: LetterboxParams | None = None, dst: np.ndarray | None = None) -> tuple[np.ndarray, LetterboxParams]:
    """Resize ``image`` (H0, W0, 3) uint8 (:func:`cocoseg.data.decode.resize_rgb`) and pad with 114 to ``out_hw``.

    Pass ``params`` when ``image`` is already resized to ``params.resized_hw`` (for example by
    :func:`cocoseg.data.decode.decode_resized`); then only the padding is done. ``dst``: an
    ``out_hw`` (H, W, 3) uint8 array to write into (only its padding is filled, not all of it).
    Returns the ``(H, W, 3) uint8`` image and the parameters.
    """
    if params is None:
        params = letterbox_params(image.shape[:2], out_hw, scaleup=scaleup)
    rh, rw = params.resized_hw
    image = resize_rgb(image, (rh, rw))
    h, w = params.out_hw
    top, left = params.pad_top, params.pad_left
    if dst is None:
        out = np.full((h, w, 3), FILL, dtype=np.uint8)
    else:
        out = dst
        out[:top], out[top + rh:] = FILL, FILL
        out[top:top + rh, :left], out[top:top + rh, left + rw:] = FILL, FILL
    if not np.may_share_memory(image, out):  # else decoded in place already (decode_into)
        out[top:top + rh, left:left + rw] = image
    return out, params


def to_original_points(points: np.ndarray, gain: float, pad: tuple[float, float]) -> np.ndarray:
    """Letterboxed (..., 2) xy -> original-image xy: ``(q - pad) / gain``."""
    return (np.asarray(points, dtype=np.float32) - np.asarray(pad, dtype=np.float32)) / np.float32(gain)


def to_original_boxes(boxes_xyxy: np.ndarray, gain: float, pad: tuple[float, float],
                      orig_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Letterboxed (n, 4) xyxy -> original-image xyxy, clipped to the original frame when given."""
    pad_x, pad_y = pad
    out = (np.asarray(boxes_xyxy, dtype=np.float32) - np.float32([pad_x, pad_y, pad_x, pad_y])) / np.float32(gain)
    if orig_hw is not None:
        h0, w0 = orig_hw
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w0)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h0)
    return out
