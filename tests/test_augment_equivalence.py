"""The OpenCV input stage (issue 21) keeps the augmentation's meaning: the same random draws with
the same ranges, in the same order, as the Pillow stage it replaced (a frozen copy in
``tests/frozen_augment``), and on seeded real COCO photos (coco8-seg) and COCO-shaped synthetic
images the same instances, polygons, boxes and overlap maps, with pixels that differ only in
resampling (aligned within a pixel)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from augment_rows import make_rows
from frozen_augment import augment as frozen
from frozen_augment import instances as frozen_instances

from cocoseg.data import augment, instances
from cocoseg.data.stage import AugmentBatch

REPO = Path(__file__).resolve().parents[1]
COCO8 = REPO / "tests" / "fixtures" / "coco8-seg"


def _coco8_rows() -> list[dict]:
    from cocoseg.structures import COCO91_TO_COCO80

    rows = []
    for split in ("train", "val"):
        coco = json.loads((COCO8 / "annotations" / f"instances_{split}.json").read_text())
        anns: dict[int, list] = {}
        for a in coco["annotations"]:
            if isinstance(a.get("segmentation"), list):
                anns.setdefault(a["image_id"], []).append(
                    {"id": a["id"], "category": COCO91_TO_COCO80[a["category_id"]], "iscrowd": bool(a["iscrowd"]),
                     "polygons": a["segmentation"]})
        for img in coco["images"]:
            rows.append({"image_id": img["id"], "width": img["width"], "height": img["height"],
                         "image": (COCO8 / "images" / split / img["file_name"]).read_bytes(),
                         "annotations": anns.get(img["id"], [])})
    return rows


def _coco_like_rows(n: int, tmp: Path) -> list[dict]:
    from cocoseg.ingest.synthetic import write_coco_like
    from cocoseg.structures import COCO91_TO_COCO80

    write_coco_like(str(tmp), n, 1, seed=3)
    coco = json.loads((tmp / "annotations" / "instances_train.json").read_text())
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(
            {"id": a["id"], "category": COCO91_TO_COCO80[a["category_id"]], "iscrowd": bool(a["iscrowd"]),
             "polygons": a["segmentation"] if isinstance(a["segmentation"], list) else []})
    return [{"image_id": i["id"], "width": i["width"], "height": i["height"],
             "image": (tmp / "train" / i["file_name"]).read_bytes(), "annotations": anns.get(i["id"], [])}
            for i in coco["images"]]


class _Recorder:
    """A generator that records every draw (method and arguments) and delegates to a real one."""

    def __init__(self, seed: int):
        self.rng, self.calls = np.random.default_rng(seed), []

    def __getattr__(self, name: str):
        method = getattr(self.rng, name)

        def draw(*args, **kwargs):
            self.calls.append((name, tuple(float(a) if isinstance(a, (int, float)) else a for a in args),
                               tuple(sorted(kwargs.items()))))
            return method(*args, **kwargs)
        return draw


def test_random_draws_keep_their_ranges_and_order() -> None:
    """The yolov8 chain draws, per image: mosaic p, 3 partners, the centre in [S/2, 3S/2], the
    affine's rotation 0, zoom in [0.5, 1.5], shears 0, translation in [0.4, 0.6] of the output,
    three HSV gains in [-1, 1] and the flip: exactly the frozen stage's calls, in its order."""
    rows = make_rows(6, (200, 130), instances=2)
    calls = {}
    for name, module in (("new", augment), ("frozen", frozen)):
        rec = _Recorder(7)
        module.augment_rows(rows, preset="yolov8", imgsz=128, rng=rec, buffer=module.MosaicBuffer(6))
        calls[name] = rec.calls
    assert calls["new"] == calls["frozen"]
    first = calls["new"][:10]
    assert [c[0] for c in first] == ["random", "integers", "integers", "uniform", "uniform", "uniform", "uniform",
                                     "uniform", "uniform", "uniform"]
    assert first[2][1:] == ((64.0, 193.0), (("size", 2),))  # mosaic centre in [S/2, 3S/2]
    assert [c[1] for c in first[3:9]] == [(-0.0, 0.0), (0.5, 1.5), (-0.0, 0.0), (-0.0, 0.0), (0.4, 0.6), (0.4, 0.6)]
    assert first[9][1] == (-1.0, 1.0, 3.0)  # HSV gains 1 + U(-1, 1) * (0.015, 0.7, 0.4)
    assert calls["new"][10][0] == "random"  # the flip
    closed = _Recorder(7)
    augment.augment_rows(rows[:1], preset="yolov8-close", imgsz=128, rng=closed)
    assert [c[0] for c in closed.calls] == ["uniform"] * 7 + ["random"]  # no mosaic draws


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.5)


def _compare(new: list, old: list, *, blur_tol: float) -> None:
    """Same instances and geometry; pixels equal up to resampling (OpenCV's bilinear warp does
    not average when zooming out, Pillow's resize did): blurred, the two images are closer than
    ``blur_tol`` grey levels on average, and at most 0.6x as far apart as when either is moved by
    one pixel, so the pixels sit where the polygons say, within a pixel."""
    for a, b in zip(new, old, strict=True):
        assert a.image.shape == b.image.shape and a.image_id == b.image_id
        assert np.array_equal(a.cls, b.cls)
        np.testing.assert_allclose(a.segments, b.segments, atol=1e-3)
        fa, fb = instances.format_sample(a), frozen_instances.format_sample(b)
        assert (fa["masks"] != fb["masks"]).mean() < 0.002  # the same overlap map, within a cell
        np.testing.assert_allclose(fa["labels"], fb["labels"], atol=1.0 / a.image.shape[0])  # boxes within a pixel
        na, nb = _blur(a.image), _blur(b.image)
        here = np.abs(na - nb).mean()
        moved = min(np.abs(_blur(np.roll(a.image, s, axis=ax)) - nb).mean() for ax in (0, 1) for s in (-1, 1))
        assert here < blur_tol and (here < 0.6 * moved or here < 0.05), (here, moved)


@pytest.mark.parametrize("preset,tol", [("yolov8", 2.0), ("yolov8-close", 1.0), ("val", 0.5)])
def test_same_augmentation_as_the_frozen_stage_on_real_photos(preset: str, tol: float) -> None:
    rows = _coco8_rows()
    new = augment.augment_chunk(rows, preset=preset, imgsz=320, seed=11, epoch=2)
    old = frozen.augment_chunk(rows, preset=preset, imgsz=320, seed=11, epoch=2)
    assert sum(s.num_instances for s in new) > 8
    _compare(new, old, blur_tol=tol)


def test_same_augmentation_as_the_frozen_stage_on_coco_shaped_images(tmp_path: Path) -> None:
    rows = _coco_like_rows(6, tmp_path)
    for preset, tol in (("yolov8", 2.0), ("val", 0.5)):
        new = augment.augment_chunk(rows, preset=preset, imgsz=320, seed=5, epoch=0)
        old = frozen.augment_chunk(rows, preset=preset, imgsz=320, seed=5, epoch=0)
        _compare(new, old, blur_tol=tol)


def test_stage_output_column_matches_the_samples() -> None:
    """AugmentBatch makes the images in its output column (and decodes val photos in place there):
    the same images, masks and labels as formatting the chain's samples one by one."""
    rows = _coco8_rows()
    for preset in ("yolov8", "yolov8-close", "val"):
        batch = AugmentBatch(preset=preset, imgsz=256, seed=4, epoch=1)(rows)
        samples = augment.augment_chunk(rows, preset=preset, imgsz=256, seed=4, epoch=1)
        for k, smp in enumerate(samples):
            row = instances.format_sample(smp)
            assert np.array_equal(batch["image"][k], row["image"]) and np.array_equal(batch["masks"][k], row["masks"])
            assert batch["labels"][k] == row["labels"].tobytes()


def test_direct_mosaic_warp_matches_the_canvas_path() -> None:
    """Each mosaic source warped straight into the output gives the picture that warping the
    2x canvas gives (up to the half-pixel blend along the seams)."""
    rows = _coco8_rows()[:4]
    loaded = [augment.load_sample(r, 256) for r in rows]
    p = augment.get_preset("yolov8")
    for seed in range(4):
        direct = augment._mosaic_affine(loaded, 256, (256, 256), p, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        canvas = augment.mosaic4(loaded, 256, rng)
        via = augment.random_affine(canvas, (256, 256), p, rng)
        d = np.abs(direct.image.astype(int) - via.image.astype(int))
        assert (d > 8).mean() < 0.01 and d.mean() < 0.5
        np.testing.assert_array_equal(direct.segments, via.segments)
