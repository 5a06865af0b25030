"""Decode the encoded image bytes of a snapshot row into RGB pixels (Pillow, no OpenCV).

Every mode Pillow reads becomes ``(H, W, 3) uint8`` RGB: greyscale (``L``, ``LA``, ``1``),
palette (``P``), ``RGBA``, ``CMYK`` (including Adobe's inverted CMYK JPEGs, which Pillow
handles), ``YCbCr`` and 16-bit / float greyscale (``I;16``, ``I``, ``F``, rescaled to 0..255).
EXIF orientation is deliberately *not* applied: COCO's ``width``/``height`` and polygons refer to
the stored pixel grid, so rotating the pixels would misalign every annotation.

Coordinates: Pillow resizes map the continuous pixel frame (pixel ``i`` spans ``[i, i+1)``)
linearly, so a point ``(x, y)`` of the original maps to ``(x * w1 / w0, y * h1 / h0)``.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

from cocoseg.utils import UserError

__all__ = ["DecodeError", "decode_rgb", "decode_resized"]

# Pillow's default limit (~179 Mpx) turns decompression bombs into warnings; we refuse instead.
_MAX_PIXELS = 200_000_000


class DecodeError(UserError):
    """An image's bytes cannot be decoded, or do not match the row's declared size."""


def _open(data: bytes, record: str) -> Image.Image:
    if not data:
        raise DecodeError(f"image {record}: the row has no image bytes; re-ingest the snapshot")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > _MAX_PIXELS:
                raise DecodeError(f"image {record}: {img.width}x{img.height} exceeds {_MAX_PIXELS} pixels")
        return img
    except DecodeError:
        raise
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError)
        raise DecodeError(f"image {record}: cannot decode the image bytes ({type(exc).__name__}: {exc})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. High bit-depth greyscale is rescaled by its maximum."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / peak if peak > 255.0 else 1.0
        grey = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")  # otherwise Pillow warns about palette transparency
    return img.convert("RGB")


def _check_size(img: Image.Image, expect_wh: tuple[int, int] | None, record: str) -> None:
    if expect_wh is not None and tuple(img.size) != tuple(expect_wh):
        raise DecodeError(f"image {record}: decoded size {img.width}x{img.height} differs from the row's "
                          f"width x height {expect_wh[0]}x{expect_wh[1]}; re-ingest the snapshot")


def decode_rgb(data: bytes, *, record: str = "?", expect_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Decode encoded bytes to ``(H, W, 3) uint8`` RGB at the stored size.

    ``record`` names the row in error messages; ``expect_wh`` (width, height) is checked when given.
    """
    img = _open(data, record)
    _check_size(img, expect_wh, record)
    try:
        return np.asarray(_to_rgb(img))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"image {record}: cannot decode the image bytes ({type(exc).__name__}: {exc})") from None


def resized_shape(h0: int, w0: int, long_side: int) -> tuple[int, int]:
    """Spec 8.3: scale so the longer side is ``long_side`` (up or down); new side = min(ceil(side*r), long_side)."""
    r = long_side / max(h0, w0)
    return min(math.ceil(h0 * r), long_side), min(math.ceil(w0 * r), long_side)


def decode_resized(data: bytes, size_hw: tuple[int, int], *, record: str = "?",
                   expect_wh: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode and resize (bilinear) to ``size_hw`` = (h1, w1) in one go.

    JPEGs are decoded at a reduced DCT scale (1/2, 1/4, 1/8) when that still covers the target
    size, which is several times faster than a full decode for large images. Returns the
    ``(h1, w1, 3) uint8`` RGB image and the original ``(h0, w0)``; point coordinates of the original
    scale by ``(w1 / w0, h1 / h0)``.
    """
    img = _open(data, record)
    _check_size(img, expect_wh, record)
    h0, w0 = img.height, img.width
    h1, w1 = size_hw
    try:
        if img.format == "JPEG" and (w1 < w0 or h1 < h0):
            img.draft("RGB", (w1, h1))  # picks the largest reduction that still is >= (w1, h1)
        img = _to_rgb(img)
        if img.size != (w1, h1):
            img = img.resize((w1, h1), Image.Resampling.BILINEAR)
        return np.asarray(img), (h0, w0)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"image {record}: cannot decode the image bytes ({type(exc).__name__}: {exc})") from None
