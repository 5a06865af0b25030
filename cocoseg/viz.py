"""The one overlay renderer: masks filled in class colours, boxes, ``name score`` labels.

- :func:`draw_detections` draws one image's detections (predict PNGs, previews);
- :func:`render_comparison` lays out ground truth beside predictions for N images, each tile
  scaled to at least ``min_side`` pixels (the validation preview logged to MLflow);
- :func:`class_colour` gives every class a stable colour, the same in every picture.

Pure numpy + Pillow over :class:`~cocoseg.structures.Detections` (layer L0 types only).
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cocoseg.structures import Detections

__all__ = ["class_colour", "draw_detections", "render_comparison", "to_png"]


def class_colour(cls: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour per class index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((cls * 0.618034) % 1.0, 0.8, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_detections(rgb: np.ndarray, det: Detections, class_names: Sequence[str], *, scale: float = 1.0,
                    alpha: float = 0.5, show_scores: bool = True) -> Image.Image:
    """(h, w, 3) uint8 image with ``det`` (same pixel frame) drawn on, resized by ``scale``.

    Masks (``det.masks`` (n, h, w) bool, optional) are blended at ``alpha`` in the class colour;
    boxes outlined; labels ``name score`` on a filled tag above each box.
    """
    canvas = np.asarray(rgb, dtype=np.float32).copy()
    if det.masks is not None:
        for mask, cls in zip(det.masks.numpy(), det.classes.tolist(), strict=True):
            canvas[mask] = canvas[mask] * (1 - alpha) + np.float32(class_colour(cls)) * alpha
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    if scale != 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    # Label size follows the drawn image (~1/30 of its short side), not the upscale factor: a
    # 96 px image shown at 480 px keeps labels the size of a 480 px image's.
    font = _font(max(10, round(min(image.size) / 30)))
    for box, cls, score in zip(det.boxes_xyxy.tolist(), det.classes.tolist(), det.scores.tolist(), strict=True):
        colour = class_colour(cls)
        x1, y1, x2, y2 = (v * scale for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        name = class_names[cls] if cls < len(class_names) else str(cls)
        label = f"{name} {score:.2f}" if show_scores else name
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        # the tag stays inside the image: above the box, or inside its top edge at the image's top;
        # shifted left when the box ends near the right edge
        x_text = max(0.0, min(x1, image.width - (right - left) - 4))
        y_text = max(0.0, y1 - (bottom - top) - 3)
        draw.rectangle((x_text, y_text, x_text + (right - left) + 4, y_text + (bottom - top) + 3), fill=colour)
        draw.text((x_text + 2, y_text - top), label, fill=(0, 0, 0), font=font)
    return image


def render_comparison(images: Sequence[np.ndarray], truths: Sequence[Detections], predictions: Sequence[Detections],
                      class_names: Sequence[str], *, min_side: int = 480, pairs_per_row: int = 2) -> Image.Image:
    """A sheet of (ground truth | prediction) pairs, one pair per image, ``pairs_per_row`` per row.

    ``images`` (h, w, 3) uint8; ``truths`` / ``predictions`` in each image's pixel frame (ground
    truth scores are not shown). Tiles are scaled so their shorter side is >= ``min_side``.
    """
    tiles = []
    for rgb, truth, pred in zip(images, truths, predictions, strict=True):
        scale = max(1.0, min_side / min(rgb.shape[:2]))
        left = draw_detections(rgb, truth, class_names, scale=scale, show_scores=False)
        right = draw_detections(rgb, pred, class_names, scale=scale)
        for tile, caption in ((left, "ground truth"), (right, f"prediction ({len(pred)})")):
            ImageDraw.Draw(tile).text((6, tile.height - 22), caption, fill=(255, 255, 255), font=_font(16))
        tiles.append((left, right))
    if not tiles:
        return Image.new("RGB", (min_side, min_side), (0, 0, 0))
    gap = 8
    tile_w = max(t[0].width for t in tiles) * 2 + gap
    tile_h = max(t[0].height for t in tiles)
    rows = (len(tiles) + pairs_per_row - 1) // pairs_per_row
    columns = min(pairs_per_row, len(tiles))
    sheet = Image.new("RGB", (columns * (tile_w + gap), rows * (tile_h + gap)), (24, 24, 24))
    for i, (left, right) in enumerate(tiles):
        x, y = (i % pairs_per_row) * (tile_w + gap), (i // pairs_per_row) * (tile_h + gap)
        sheet.paste(left, (x, y))
        sheet.paste(right, (x + left.width + gap, y))
    return sheet


def to_png(image: Image.Image) -> bytes:
    """PNG bytes at zlib level 1: ~4x faster to encode than the default level 6 for ~1.2x the
    size (a validation preview is encoded every epoch, inside the validation time)."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
