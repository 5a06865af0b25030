"""``cocoseg predict``: JSON + PNG per image, local and s3://, unreadable images reported."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from cocoseg import storage

CLASS_NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An n-variant, 3-class checkpoint whose class-1 logits are pushed up so it detects things."""
    from cocoseg.model import ModelCard, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("n", 3)
    with torch.no_grad():
        for branch in model.head.cv3:
            branch[-1].bias[1] = 3.0
    dest = tmp_path_factory.mktemp("ckpt") / "n-shapes"
    save_checkpoint(str(dest), model, ModelCard(variant="n", num_classes=3, class_names=CLASS_NAMES, imgsz=128))
    return dest


def _check_outputs(read, stem: str, orig_hw: tuple[int, int]) -> int:
    record = json.loads(read(f"{stem}.json"))
    assert (record["height"], record["width"]) == orig_hw
    for det in record["detections"]:
        x1, y1, x2, y2 = det["box_xyxy"]
        assert 0 <= x1 <= x2 <= orig_hw[1] and 0 <= y1 <= y2 <= orig_hw[0]
        assert det["class_name"] == CLASS_NAMES[det["class_id"]] and 0.25 < det["score"] <= 1
        rle = {"size": det["mask_rle"]["size"], "counts": det["mask_rle"]["counts"].encode()}
        assert mask_utils.decode(rle).shape == orig_hw
    overlay = Image.open(io.BytesIO(read(f"{stem}.png")))
    assert overlay.format == "PNG" and overlay.size == (orig_hw[1], orig_hw[0])
    return len(record["detections"])


def test_predict_local_with_an_unreadable_image(cli, checkpoint: Path, coco8_seg: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000000000009.jpg", "000000000025.jpg"):
        shutil.copy(coco8_seg / "images" / "train" / name, images / name)
    (images / "broken.jpg").write_text("this is not a JPEG")
    out = tmp_path / "out"
    proc = cli("predict", checkpoint, images, tmp_path / "missing.png", "--out", out, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "broken.jpg" in proc.stderr and "not a decodable image" in proc.stderr
    assert "missing.png" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stem"] for s in summary["images"]] == ["000000000009", "000000000025"]
    assert len(summary["failed"]) == 2
    found = 0
    for stem in ("000000000009", "000000000025"):
        with Image.open(images / f"{stem}.jpg") as img:
            orig_hw = (img.height, img.width)
        found += _check_outputs(lambda name: (out / name).read_bytes(), stem, orig_hw)
    assert found > 0, "the biased checkpoint should detect something"
    overlay = np.asarray(Image.open(out / "000000000009.png").convert("RGB"))
    original = np.asarray(Image.open(images / "000000000009.jpg").convert("RGB"))
    assert (np.abs(overlay.astype(int) - original.astype(int)).sum(-1) > 60).mean() > 0.001  # something drawn


def test_predict_s3_in_and_out(cli, checkpoint: Path, coco8_seg: Path, s3_bucket: str) -> None:
    weights = f"{s3_bucket}/weights/n-shapes"
    storage.upload_dir(checkpoint, weights)
    image = f"{s3_bucket}/images/000000000036.jpg"
    storage.write_bytes(image, (coco8_seg / "images" / "val" / "000000000036.jpg").read_bytes())
    out = f"{s3_bucket}/predictions"
    proc = cli("predict", weights, f"{s3_bucket}/images", "--out", out)
    assert "1 image(s) processed, 0 failed" in proc.stdout
    with Image.open(coco8_seg / "images" / "val" / "000000000036.jpg") as img:
        orig_hw = (img.height, img.width)
    _check_outputs(lambda name: storage.read_bytes(f"{out}/{name}"), "000000000036", orig_hw)


def test_predict_bad_checkpoint_is_a_clear_error(cli, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    proc = cli("predict", tmp_path / "ckpt", tmp_path / "x.jpg", "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "model_card.json" in proc.stderr and "Traceback" not in proc.stderr
