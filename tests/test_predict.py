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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_predict_cli_local_and_s3_with_unreadable_images(cli, checkpoint: Path, coco8_seg: Path, tmp_path: Path,
                                                         s3_bucket: str) -> None:
    """One real ``cocoseg predict`` run: weights and one image on S3, a local folder holding two
    images and a broken file, a missing path; output to S3. The good images are processed, the
    bad ones reported (exit status 1, no traceback)."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000000000009.jpg", "000000000025.jpg"):
        shutil.copy(coco8_seg / "images" / "train" / name, images / name)
    (images / "broken.jpg").write_text("this is not a JPEG")
    weights = f"{s3_bucket}/weights/n-shapes"
    storage.upload_dir(checkpoint, weights)
    s3_image = f"{s3_bucket}/images/000000000036.jpg"
    storage.write_bytes(s3_image, (coco8_seg / "images" / "val" / "000000000036.jpg").read_bytes())
    out = f"{s3_bucket}/predictions"
    proc = cli("predict", weights, images, s3_image, tmp_path / "missing.png", "--out", out, "--max-det", "10",
               check=False, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "broken.jpg" in proc.stderr and "not a decodable image" in proc.stderr
    assert "missing.png" in proc.stderr and "Traceback" not in proc.stderr
    assert "3 image(s) processed, 2 failed" in proc.stdout
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert [s["stem"] for s in summary["images"]] == ["000000000009", "000000000025", "000000000036"]
    found = 0
    for stem, folder in (("000000000009", "train"), ("000000000025", "train"), ("000000000036", "val")):
        with Image.open(coco8_seg / "images" / folder / f"{stem}.jpg") as img:
            orig_hw = (img.height, img.width)
        found += _check_outputs(lambda name: storage.read_bytes(f"{out}/{name}"), stem, orig_hw)
    assert 0 < found <= 30, "the biased checkpoint should detect something"


def test_predict_images_local_overlay(checkpoint: Path, coco8_seg: Path, tmp_path: Path) -> None:
    from cocoseg.inference.files import predict_images
    from cocoseg.model import load_checkpoint

    model, card = load_checkpoint(str(checkpoint))
    image = coco8_seg / "images" / "train" / "000000000009.jpg"
    summary = predict_images(model, card.class_names, [str(image)], str(tmp_path / "out"), imgsz=card.imgsz,
                             max_det=10)
    assert summary["failed"] == [] and summary["images"][0]["detections"] > 0
    overlay = np.asarray(Image.open(tmp_path / "out" / "000000000009.png").convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    changed = (np.abs(overlay.astype(int) - original.astype(int)).sum(-1) > 60).mean()
    assert 0.001 < changed < 1.0  # masks and boxes were drawn, the image is still there


def test_predict_bad_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cocoseg.cli import main

    (tmp_path / "ckpt").mkdir()
    assert main(["predict", str(tmp_path / "ckpt"), str(tmp_path / "x.jpg"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model_card.json" in err and "Traceback" not in err


def test_an_image_past_pillows_pixel_limit_is_an_unreadable_image(tmp_path, monkeypatch):
    """Pillow's DecompressionBombError is no OSError: it must still become ImageReadError."""
    from cocoseg.inference.files import ImageReadError, read_image

    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    assert read_image(str(path)).shape == (64, 64, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 > 2 x 100: a "bomb"
    with pytest.raises(ImageReadError, match="not a decodable image"):
        read_image(str(path))


def test_predict_defaults_are_the_predict_preset(capsys) -> None:
    """``cocoseg predict`` and the Predictor run the PREDICT preset unless told otherwise, and the
    help's numbers are that preset's (the parser does not import it, to keep ``--help`` torch-free)."""
    from cocoseg.cli import build_parser
    from cocoseg.inference import PREDICT, Predictor

    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for value in (PREDICT.conf, PREDICT.iou, PREDICT.max_det):
        assert f"the predict preset's, {value})" in text
    assert Predictor(torch.nn.Conv2d(3, 3, 1), class_names=[]).protocol == PREDICT
