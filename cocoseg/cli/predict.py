"""``cocoseg predict WEIGHTS IMAGES... --out DIR``: detections as JSON plus PNG overlays.

WEIGHTS is a cocoseg checkpoint folder (``model.safetensors`` + ``model_card.json``); IMAGES
are image files or folders of them; WEIGHTS, IMAGES and DIR may each be local or ``s3://``. For
every image ``<stem>.json`` (boxes in original-image pixels, scores, class ids and names, masks
as COCO RLE) and ``<stem>.png`` (masks, boxes and class names drawn on the image) are written,
plus ``summary.json``. An image that cannot be read is reported and skipped; the others are
still processed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from cocoseg import storage
from cocoseg.utils import UserError, get_logger

if TYPE_CHECKING:  # torch, numpy and PIL are imported when the command runs (fast `cocoseg --help`)
    import numpy as np
    import torch

    from cocoseg.structures import Detections

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "expand_images", "predict_images", "register"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
log = get_logger(__name__)


class ImageReadError(UserError):
    """An input image that is missing or cannot be decoded."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a checkpoint on images: JSON detections + PNG overlays",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="cocoseg checkpoint folder (local or s3://)")
    p.add_argument("images", nargs="+", help="image files or folders (local or s3://)")
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (default 300)")
    p.add_argument("--imgsz", type=int, default=0, help="network input side (default: the model card's)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cocoseg.model import load_checkpoint  # heavy import only when the command runs

    model, card = load_checkpoint(args.weights, device=args.device)
    imgsz = args.imgsz or int(card.imgsz)
    if imgsz % 32:
        raise UserError(f"--imgsz {imgsz} is not a multiple of 32")
    summary = predict_images(model, list(card.class_names), expand_images(args.images), args.out,
                             imgsz=imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det)
    for failure in summary["failed"]:
        print(f"cocoseg predict: error: {failure['image']}: {failure['error']}", file=sys.stderr)
    print(f"{len(summary['images'])} image(s) processed, {len(summary['failed'])} failed; "
          f"results in {args.out}")
    return 1 if summary["failed"] else 0


def expand_images(inputs: Sequence[str]) -> list[str]:
    """Files as given; folders -> their image files (sorted). A missing path stays in the list so
    that it is reported as unreadable with the others still processed."""
    out: list[str] = []
    for uri in inputs:
        if storage.exists(uri) and storage.is_dir(uri):
            found = [e.uri for e in storage.list_files(uri) if e.uri.lower().endswith(IMAGE_SUFFIXES)]
            if not found:
                raise UserError(f"{uri}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(uri)
    return out


def read_image(uri: str) -> np.ndarray:
    """(h, w, 3) uint8 RGB, EXIF orientation applied; :class:`ImageReadError` when unreadable."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, storage.StorageError) as exc:
        raise ImageReadError(f"cannot read image: {exc}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        # DecompressionBombError (pixels past Pillow's safety limit) is not an OSError
        raise ImageReadError(f"not a decodable image ({len(data)} bytes): {exc}") from None


def predict_images(model: torch.nn.Module, class_names: Sequence[str], images: Sequence[str], out_dir: str, *,
                   imgsz: int = 640, conf: float = 0.25, iou: float = 0.7,
                   max_det: int = 300) -> dict[str, Any]:
    """Run ``model`` (eval mode) on each image and write ``<stem>.json``, ``<stem>.png`` and
    ``summary.json`` under ``out_dir``. Returns the summary: ``images`` (written stems, counts)
    and ``failed`` (image, error)."""
    import torch

    from cocoseg.data.letterbox import letterbox
    from cocoseg.model.postprocess import postprocess
    from cocoseg.structures import Detections

    device = next(model.parameters()).device
    model.eval()
    summary: dict[str, Any] = {"images": [], "failed": [], "imgsz": imgsz, "conf": conf, "iou": iou}
    used: set[str] = set()
    for uri in images:
        try:
            rgb = read_image(uri)
        except ImageReadError as exc:
            log.error("%s: %s", uri, exc)
            summary["failed"].append({"image": uri, "error": str(exc)})
            continue
        boxed, params = letterbox(rgb, (imgsz, imgsz))
        batch = torch.from_numpy(boxed).permute(2, 0, 1)[None].to(device).float() / 255
        with torch.no_grad():
            pred, proto = model(batch)
        ratio_pad = (params.gain, (float(params.pad_left), float(params.pad_top)))
        (det,) = postprocess(pred, proto, input_hw=(imgsz, imgsz), orig_hw=[rgb.shape[:2]],
                             ratio_pads=[ratio_pad],
                             conf=conf, iou=iou, max_det=max_det, multi_label=False)
        det = Detections(det.boxes_xyxy.cpu(), det.scores.cpu(), det.classes.cpu(), det.masks.cpu())
        stem = _unique_stem(uri, used)
        record = detections_to_json(uri, rgb.shape[:2], det, class_names)
        storage.write_json(storage.join(out_dir, f"{stem}.json"), record)
        storage.write_bytes(storage.join(out_dir, f"{stem}.png"), draw_overlay(rgb, det, class_names))
        summary["images"].append({"image": uri, "stem": stem, "detections": len(det)})
        log.info("%s: %d detection(s)", uri, len(det))
    storage.write_json(storage.join(out_dir, "summary.json"), summary)
    return summary


def _unique_stem(uri: str, used: set[str]) -> str:
    stem = PurePosixPath(uri.replace("\\", "/")).stem or "image"
    candidate, k = stem, 1
    while candidate in used:
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return candidate


def detections_to_json(uri: str, orig_hw: tuple[int, int], det: Detections,
                       class_names: Sequence[str]) -> dict:
    """JSON-able record of one image's detections (boxes xyxy in original pixels, masks as RLE)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rles = []
    if det.masks is not None and len(det):
        rles = mask_utils.encode(np.asfortranarray(det.masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
    rows = []
    for i in range(len(det)):
        cls = int(det.classes[i])
        row = {"class_id": cls, "class_name": class_names[cls] if cls < len(class_names) else str(cls),
               "score": round(float(det.scores[i]), 5),
               "box_xyxy": [round(float(v), 2) for v in det.boxes_xyxy[i]]}
        if rles:
            row["mask_rle"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("utf-8")}
        rows.append(row)
    return {"image": uri, "height": int(orig_hw[0]), "width": int(orig_hw[1]), "detections": rows}


def _colour(cls: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per class (golden-ratio hue steps)."""
    from PIL import Image

    hue = (cls * 0.618034) % 1.0
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), 200, 255)).convert("RGB").getpixel((0, 0))
    return tuple(int(v) for v in rgb)


def draw_overlay(rgb: np.ndarray, det: Detections, class_names: Sequence[str]) -> bytes:
    """PNG bytes of the image with masks tinted (50 %), boxes outlined and ``name score`` labels."""
    import numpy as np
    from PIL import Image, ImageDraw

    canvas = rgb.astype(np.float32)
    for i in range(len(det)):
        if det.masks is not None:
            m = det.masks[i].numpy()
            canvas[m] = canvas[m] * 0.5 + np.array(_colour(int(det.classes[i])), dtype=np.float32) * 0.5
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i in range(len(det)):
        cls = int(det.classes[i])
        colour = _colour(cls)
        x1, y1, x2, y2 = (float(v) for v in det.boxes_xyxy[i])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        label = f"{class_names[cls] if cls < len(class_names) else cls} {float(det.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label)
        y_text = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, y_text, x1 + (right - left) + 4, y_text + (bottom - top) + 2), fill=colour)
        draw.text((x1 + 2, y_text), label, fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
