"""Decode the encoded image bytes of a snapshot row into RGB pixels.

JPEGs (nearly all of COCO) go through simplejpeg (libjpeg-turbo's TurboJPEG API with its SIMD
paths): 1.0 CPU ms for a 640x480 COCO photo against 1.8 for Pillow's decode plus its array copy
and 1.2 for ``cv2.imdecode`` (one thread, measured 2026-12-06, docs/input-pipeline.md). Anything
simplejpeg refuses (other formats, CMYK, a JPEG it finds corrupt) goes through Pillow, which
decides and names the problem. Resizes are OpenCV's, on as many threads as ``OMP_NUM_THREADS``
says (Ray sets it to an actor's ``num_cpus``). Every mode Pillow reads becomes ``(H, W, 3) uint8``
RGB: greyscale (``L``, ``LA``, ``1``), palette (``P``), ``RGBA``, ``CMYK`` (including Adobe's inverted CMYK JPEGs, which Pillow
handles), ``YCbCr`` and 16-bit / float greyscale (``I;16``, ``I``, ``F``, rescaled to 0..255).
EXIF orientation is deliberately *not* applied: COCO's ``width``/``height`` and polygons refer to
the stored pixel grid, so rotating the pixels would misalign every annotation.

Coordinates: resizes map the continuous pixel frame (pixel ``i`` spans ``[i, i+1)``)
linearly, so a point ``(x, y)`` of the original maps to ``(x * w1 / w0, y * h1 / h0)``.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from types import ModuleType

import numpy as np
from PIL import Image

from cocoseg.utils import UserError

__all__ = ["DecodeError", "decode_into", "decode_rgb", "decode_resized", "opencv", "resize_rgb"]

_CV2: ModuleType | None = None


def opencv() -> ModuleType:
    """OpenCV (``cv2``), imported on first use: the export and predictor paths import this module
    for the letterbox but need no image library until they resize one (the GPU check carries no
    OpenCV wheel). OpenCV starts a thread pool as wide as the machine; an input actor reserves
    ``num_cpus`` (1 by default) and Ray sets ``OMP_NUM_THREADS`` to that, so the pool follows it
    (as torch and numpy's BLAS do) rather than oversubscribe a 96-vCPU node from every actor."""
    global _CV2
    if _CV2 is None:
        import cv2

        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            cv2.setNumThreads(int(threads))
        _CV2 = cv2
    return _CV2

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
    _check_wh((img.width, img.height), expect_wh, record)


def _jpeg(data: bytes, min_hw: tuple[int, int] = (0, 0)) -> np.ndarray | None:
    """simplejpeg's decode of a JPEG to RGB, at the smallest DCT scale (1/8 .. 1) that is still
    >= ``min_hw`` when given; None when simplejpeg does not take it (not a JPEG, CMYK, damage)."""
    if data[:2] != b"\xff\xd8":
        return None
    import simplejpeg  # imported on first use, like OpenCV (see opencv())

    try:
        return simplejpeg.decode_jpeg(data, "RGB", min_height=min_hw[0], min_width=min_hw[1])
    except (ValueError, RuntimeError, OSError):
        return None


def _jpeg_wh(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG header simplejpeg reads; None for anything else, or for an image
    over the pixel limit (Pillow then refuses it with the reason)."""
    if data[:2] != b"\xff\xd8":
        return None
    import simplejpeg

    try:
        h, w, *_ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError, OSError):
        return None
    return (int(w), int(h)) if int(w) * int(h) <= _MAX_PIXELS else None


def decode_rgb(data: bytes, *, record: str = "?", expect_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Decode encoded bytes to ``(H, W, 3) uint8`` RGB at the stored size.

    ``record`` names the row in error messages; ``expect_wh`` (width, height) is checked when given.
    """
    wh = _jpeg_wh(data)
    if wh is not None:
        _check_wh(wh, expect_wh, record)
        fast = _jpeg(data)
        if fast is not None:
            return fast
    img = _open(data, record)
    _check_size(img, expect_wh, record)
    try:
        return np.asarray(_to_rgb(img))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"image {record}: cannot decode the image bytes ({type(exc).__name__}: {exc})") from None


def _check_wh(wh: tuple[int, int], expect_wh: tuple[int, int] | None, record: str) -> None:
    if expect_wh is not None and tuple(wh) != tuple(expect_wh):
        raise DecodeError(f"image {record}: decoded size {wh[0]}x{wh[1]} differs from the row's "
                          f"width x height {expect_wh[0]}x{expect_wh[1]}; re-ingest the snapshot")


def decode_into(data: bytes, dst: np.ndarray) -> np.ndarray | None:
    """Decode a JPEG of exactly ``dst``'s size into ``dst`` ((H, W, 3) uint8, C-contiguous) without
    an intermediate image; returns ``dst``, or None when that cannot be done (not a JPEG, another
    size, simplejpeg refuses it): the caller then decodes the usual way, which reports problems."""
    wh = _jpeg_wh(data)
    if wh is None or (wh[1], wh[0]) != dst.shape[:2] or not dst.flags.c_contiguous:
        return None
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, "RGB", buffer=dst)
        return dst
    except (ValueError, RuntimeError, OSError):
        return None


def resized_shape(h0: int, w0: int, long_side: int) -> tuple[int, int]:
    """Spec 8.3: scale so the longer side is ``long_side`` (up or down); new side = min(ceil(side*r), long_side)."""
    r = long_side / max(h0, w0)
    return min(math.ceil(h0 * r), long_side), min(math.ceil(w0 * r), long_side)


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, 3) uint8 to ``size_hw``: bilinear when enlarging, pixel-area averaging when
    shrinking (antialiased, as Pillow's bilinear was). Both map the continuous pixel frame
    linearly, so a point scales by ``(w1 / w0, h1 / h0)``. Returns ``image`` itself at the same size."""
    h1, w1 = size_hw
    if image.shape[:2] == (h1, w1):
        return image
    cv2 = opencv()
    shrink = h1 < image.shape[0] and w1 < image.shape[1]
    return cv2.resize(image, (w1, h1), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def decode_resized(data: bytes, size_hw: tuple[int, int], *, record: str = "?",
                   expect_wh: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode and resize to ``size_hw`` = (h1, w1) in one go.

    JPEGs are decoded at a reduced DCT scale (1/2, 1/4, 1/8) when that still covers the target
    size, which is several times faster than a full decode for large images. Returns the
    ``(h1, w1, 3) uint8`` RGB image and the original ``(h0, w0)``; point coordinates of the original
    scale by ``(w1 / w0, h1 / h0)``.
    """
    wh = _jpeg_wh(data)
    fast = None
    if wh is not None:
        _check_wh(wh, expect_wh, record)
        fast = _jpeg(data, size_hw if size_hw[0] < wh[1] or size_hw[1] < wh[0] else (0, 0))
    if fast is not None:
        return resize_rgb(fast, size_hw), (wh[1], wh[0])
    img = _open(data, record)
    _check_size(img, expect_wh, record)
    h0, w0 = img.height, img.width
    try:
        if img.format == "JPEG" and (size_hw[1] < w0 or size_hw[0] < h0):
            img.draft("RGB", (size_hw[1], size_hw[0]))  # picks the largest reduction that still is >= (w1, h1)
        return resize_rgb(np.asarray(_to_rgb(img)), size_hw), (h0, w0)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"image {record}: cannot decode the image bytes ({type(exc).__name__}: {exc})") from None
