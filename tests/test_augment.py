"""Augmentation: decode to RGB, letterbox and its inverse, geometry of image + masks + boxes
through every transform, determinism, presets."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from augment_rows import make_row, make_rows
from PIL import Image

from cocoseg.data.augment import (
    PRESETS,
    AugmentError,
    MosaicBuffer,
    augment_hsv,
    augment_rows,
    flip_horizontal,
    get_preset,
    load_letterboxed,
    load_sample,
    mosaic4,
    preset_for_epoch,
    random_affine,
)
from cocoseg.data.decode import DecodeError, decode_resized, decode_rgb
from cocoseg.data.instances import (
    AnnotationError,
    fill_polygon,
    format_sample,
    instances_from_annotations,
    overlap_map,
)
from cocoseg.data.letterbox import letterbox, letterbox_params, to_original_boxes, to_original_points
from cocoseg.data.stage import AugmentBatch, epoch_chunks

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# decode


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"),
                                      ("I;16", "PNG"), ("RGB", "WEBP")])
def test_decode_any_mode_to_rgb(mode: str, fmt: str) -> None:
    base = Image.new("RGB", (40, 30), (200, 60, 30))
    base.paste((10, 120, 240), (5, 5, 20, 20))
    img = base.convert(mode) if mode != "I;16" else base.convert("L").convert("I;16")
    data = _encode(img, fmt)
    out = decode_rgb(data, record="x", expect_wh=(40, 30))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    if mode in ("L", "I;16"):  # greyscale replicated into three equal channels
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    else:  # colour survives (CMYK JPEG included): the pasted blue square stays blue
        r, g, b = out[10, 10].astype(int)
        assert b > r + 60, (mode, out[10, 10])
    resized, orig = decode_resized(data, (15, 20), record="x")
    assert resized.shape == (15, 20, 3) and orig == (30, 40)


def test_decode_errors_name_the_record() -> None:
    with pytest.raises(DecodeError, match="image 42: cannot decode"):
        decode_rgb(b"not an image", record="42")
    with pytest.raises(DecodeError, match="image 7: the row has no image bytes"):
        decode_rgb(b"", record="7")
    data = _encode(Image.new("RGB", (40, 30)), "PNG")
    with pytest.raises(DecodeError, match="differs from the row's width x height 41x30"):
        decode_rgb(data, record="9", expect_wh=(41, 30))


def test_jpeg_draft_decode_matches_full_decode() -> None:
    row = make_row(1, (640, 480), instances=3)
    small, _ = decode_resized(row["image"], (120, 160))
    full = np.asarray(Image.fromarray(decode_rgb(row["image"])).resize((160, 120), Image.Resampling.BILINEAR))
    assert np.abs(small.astype(int) - full.astype(int)).mean() < 6


def test_simd_jpeg_decode_matches_pillow_and_falls_back() -> None:
    """JPEGs go through simplejpeg (decode.py): the same pixels as Pillow's libjpeg-turbo, the same
    DCT-scaled resize; a JPEG it refuses goes through Pillow, which names the problem."""
    photo = REPO / "tests" / "fixtures" / "coco8-seg" / "images" / "train" / "000000000009.jpg"
    data = photo.read_bytes()
    fast = decode_rgb(data, record="9", expect_wh=(640, 480))
    slow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert fast.shape == slow.shape and np.abs(fast.astype(int) - slow.astype(int)).mean() < 0.5
    half, orig = decode_resized(data, (240, 320))
    assert half.shape == (240, 320, 3) and orig == (480, 640)
    with pytest.raises(DecodeError, match="image 9: cannot decode"):
        decode_rgb(data[: len(data) // 2], record="9")  # truncated: simplejpeg refuses, Pillow explains
    with pytest.raises(DecodeError, match="differs from the row's width x height 641x480"):
        decode_rgb(data, record="9", expect_wh=(641, 480))


def test_opencv_follows_the_actors_thread_setting() -> None:
    """Ray sets OMP_NUM_THREADS to an actor's num_cpus; OpenCV's pool follows it."""
    import subprocess
    import sys

    code = "import cv2, cocoseg.data.augment; print(cv2.getNumThreads())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "1"


# ---------------------------------------------------------------------------------------------
# letterbox


@pytest.mark.parametrize("h0,w0,scaleup", [(480, 640, True), (333, 517, True), (100, 60, False), (640, 200, True)])
def test_letterbox_inverse_within_one_pixel(h0: int, w0: int, scaleup: bool) -> None:
    image = np.zeros((h0, w0, 3), np.uint8)
    out, p = letterbox(image, (320, 320), scaleup=scaleup)
    assert out.shape == (320, 320, 3)
    rh, rw = p.resized_hw
    assert p.pad_left + rw <= 320 and p.pad_top + rh <= 320
    assert abs((320 - rw) - 2 * p.pad_left) <= 1 and abs((320 - rh) - 2 * p.pad_top) <= 1
    pts = np.random.default_rng(0).uniform([0, 0], [w0, h0], size=(50, 2)).astype(np.float32)
    # forward with the per-axis scale the pixels actually got, back with the single gain
    fwd = pts * np.float32([rw / w0, rh / h0]) + np.float32(p.pad)
    assert np.abs(to_original_points(fwd, p.gain, p.pad) - pts).max() <= 1.0
    boxes = np.concatenate([pts[:10], pts[10:20]], axis=1)
    fwd_boxes = np.concatenate([fwd[:10], fwd[10:20]], axis=1)
    back = to_original_boxes(fwd_boxes, p.gain, p.pad, (h0, w0))
    assert np.abs(back - boxes).max() <= 1.0


def test_letterbox_no_scaleup_keeps_small_images() -> None:
    assert letterbox_params((100, 60), (320, 320), scaleup=False).gain == 1.0
    assert letterbox_params((100, 60), (320, 320), scaleup=True).gain == pytest.approx(3.2)


# ---------------------------------------------------------------------------------------------
# geometry: masks, boxes and pixels stay together


def _dilate(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """(2r+1) x (2r+1) binary dilation."""
    padded = np.pad(mask, r)
    h, w = mask.shape
    k = 2 * r + 1
    return np.any([padded[dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)], axis=0)


def _check_geometry(sample, *, min_iou: float = 0.98) -> None:
    """Polygons (rasterised at full size) cover the shape-coloured pixels; the 1/4 overlap map is
    the same mask sampled at cell centres; each label box is its instance's mask extent."""
    row = format_sample(sample)
    masks, labels = row["masks"], row["labels"]
    h, w = sample.image.shape[:2]
    assert masks.shape == (h // 4, w // 4) and masks.dtype == np.uint8
    assert masks.max() <= len(labels)  # a sliver may cover no 4x4 cell centre
    px = sample.image.astype(int)
    foreground = (px.max(-1) - px.min(-1)) > 60  # saturated shape colours; background and fill are grey
    order = np.argsort([-fill_polygon(s / 4, (h // 4, w // 4)).sum() for s in sample.segments], kind="stable")
    full = [fill_polygon(sample.segments[i], (h, w)) for i in order]  # in label order
    union = np.any(full, axis=0) if full else np.zeros((h, w), bool)
    # Pillow draws the test shapes with their outline (about half a pixel wider than the polygon)
    # and zoom (up to 1.5) widens that: allow 2 px along edges, nothing further inside/outside
    outside = (foreground & ~_dilate(union)).sum() / max(foreground.sum(), 1)
    missing = (~foreground & ~_dilate(~union)).sum() / max(union.sum(), 1)
    assert outside < 1 - min_iou and missing < 1 - min_iou, (outside, missing)
    assert np.array_equal(masks > 0, union[2::4, 2::4]) or \
        (((masks > 0) != union[2::4, 2::4]).mean() < 0.01)
    for k, mask in enumerate(full):  # shapes do not overlap here, so each mask is the whole instance
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        cx, cy, bw, bh = labels[k, 1:] * np.float32([w, h, w, h])
        mask_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
        assert np.abs(mask_box - box).max() <= 2.0, (mask_box, box)


NO_HSV = replace(PRESETS["yolov8"], name="geometry", hsv_gains=(0.0, 0.0, 0.0))


def test_geometry_letterbox() -> None:
    for i in range(4):
        _check_geometry(load_letterboxed(make_row(i, (200, 130), instances=1), (256, 256)))


def test_geometry_affine_and_flip() -> None:
    rng = np.random.default_rng(1)
    for i in range(6):
        smp = load_letterboxed(make_row(i, (200, 130), instances=1), (256, 256))
        smp = random_affine(smp, (256, 256), replace(NO_HSV, degrees=10.0), rng)
        _check_geometry(smp)
        _check_geometry(flip_horizontal(smp))


def test_geometry_mosaic_then_affine() -> None:
    rng = np.random.default_rng(2)
    loaded = [load_sample(make_row(i, (200, 130), instances=1), 256) for i in range(4)]
    mosaic = mosaic4(loaded, 256, rng)
    assert mosaic.image.shape == (512, 512, 3)
    _check_geometry(mosaic)
    _check_geometry(random_affine(mosaic, (256, 256), NO_HSV, rng))


def test_full_chain_geometry_without_hsv() -> None:
    rows = make_rows(8, (200, 130), instances=1)
    samples = augment_rows(rows, preset=NO_HSV, imgsz=256, rng=np.random.default_rng(3), buffer=MosaicBuffer(8))
    for smp in samples:
        assert smp.image.shape == (256, 256, 3)
        _check_geometry(smp)


def test_flip_twice_is_identity() -> None:
    smp = load_letterboxed(make_row(3, (200, 130), instances=2), (256, 256))
    back = flip_horizontal(flip_horizontal(smp))
    assert np.array_equal(back.image, smp.image)
    np.testing.assert_allclose(back.segments, smp.segments, atol=1e-4)
    once = flip_horizontal(smp)
    assert np.array_equal(once.image, smp.image[:, ::-1])


def test_hsv_keeps_shape_and_dtype() -> None:
    image = load_letterboxed(make_row(1, (200, 130)), (128, 128)).image
    out = augment_hsv(image, (0.015, 0.7, 0.4), np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert augment_hsv(image, (0.0, 0.0, 0.0), np.random.default_rng(0)) is image


# ---------------------------------------------------------------------------------------------
# presets, determinism, annotations


def test_same_seed_same_output_and_different_seed_differs() -> None:
    rows = make_rows(6, (200, 130), instances=2)
    a = AugmentBatch(preset="yolov8", imgsz=128, seed=5, epoch=0)(rows)
    b = AugmentBatch(preset="yolov8", imgsz=128, seed=5, epoch=0)(rows)
    c = AugmentBatch(preset="yolov8", imgsz=128, seed=6, epoch=0)(rows)
    d = AugmentBatch(preset="yolov8", imgsz=128, seed=5, epoch=1)(rows)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["masks"], b["masks"])
    assert list(a["labels"]) == list(b["labels"])
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["image"], d["image"])


def _by_id(batch: dict) -> dict[int, tuple[bytes, bytes, bytes]]:
    return {int(i): (batch["image"][k].tobytes(), batch["masks"][k].tobytes(), batch["labels"][k])
            for k, i in enumerate(batch["image_id"])}


def test_row_output_does_not_depend_on_its_batch() -> None:
    """Without mosaic, a row's output is a function of (seed, epoch, image id): the same in any
    batch, at any position; another epoch differs."""
    rows = make_rows(8, (200, 130), instances=2)
    stage = AugmentBatch(preset="yolov8-close", imgsz=96, seed=3, epoch=4)
    whole = _by_id(stage(rows))
    parts = {**_by_id(stage(rows[5:] + rows[:2])), **_by_id(stage(rows[2:5][::-1]))}
    assert parts == whole
    other = _by_id(AugmentBatch(preset="yolov8-close", imgsz=96, seed=3, epoch=5)(rows))
    assert all(other[i][0] != whole[i][0] for i in whole)


def test_mosaic_partners_come_from_the_chunk_whatever_its_order() -> None:
    """With mosaic, the output depends on the chunk's rows, not their order or what ran before
    (the same actor having augmented other rows first changes nothing)."""
    rows = make_rows(6, (200, 130), instances=1)
    stage = AugmentBatch(preset="yolov8", imgsz=128, seed=1, epoch=2)
    first = _by_id(stage(rows))
    stage(make_rows(6, (90, 70), seed=9, instances=3))  # unrelated work in between
    assert _by_id(stage(rows[::-1])) == first
    assert max(np.frombuffer(v[2], np.float32).size // 5 for v in first.values()) > 1  # partners joined


def test_epoch_chunks_cover_each_row_once_and_are_seeded() -> None:
    shard_rows = [7, 5, 9, 3]
    plans = {w: [epoch_chunks(shard_rows, seed=0, epoch=1, rank=r, world=w, chunk_rows=4) for r in range(w)]
             for w in (1, 2, 3)}
    for world, per_rank in plans.items():
        rows = [(s, i) for chunks in per_rank for chunk in chunks for s, a, b in chunk for i in range(a, b)]
        assert len(rows) == len(set(rows)) == (24 // world) * world  # once each; equal split drops the rest
        assert len({sum(b - a for c in chunks for _, a, b in c) for chunks in per_rank}) == 1  # equal parts
        assert all(sum(b - a for _, a, b in c) <= 4 for chunks in per_rank for c in chunks)
    again = epoch_chunks(shard_rows, seed=0, epoch=1, rank=0, world=1, chunk_rows=4)
    assert again == plans[1][0]
    orders = {tuple(s for c in epoch_chunks(shard_rows, seed=0, epoch=e, rank=0, world=1, chunk_rows=24)
                    for s, _, _ in c) for e in range(6)}
    assert len(orders) > 1  # the shard order changes with the epoch
    limited = epoch_chunks(shard_rows, seed=0, epoch=0, rank=0, world=1, chunk_rows=100, limit=10, shuffle=False)
    assert limited == [[(0, 0, 7), (1, 0, 3)]]
    for runs in (1, 2, 4, 16):  # every row once, whatever the runs per chunk
        plan = epoch_chunks(shard_rows, seed=0, epoch=3, rank=1, world=2, chunk_rows=4, runs_per_chunk=runs)
        rows = [(s, i) for c in plan for s, a, b in c for i in range(a, b)]
        assert len(rows) == len(set(rows)) == 12 and all(sum(b - a for _, a, b in c) <= 4 for c in plan)


def test_one_shard_batches_mix_differently_every_epoch() -> None:
    """One shard of 240 rows (the quality bench's train split): each chunk (an actor call: the
    rows mosaic draws partners from, one batch here) holds short runs from anywhere in the split,
    and which rows share a chunk changes from epoch to epoch; ``runs_per_chunk=1`` is the old
    plan, the same 15 runs of 16 consecutive rows, in the same order, every epoch."""
    def groups(epoch: int, runs: int) -> list[frozenset[int]]:
        plan = epoch_chunks([240], seed=0, epoch=epoch, rank=0, world=1, chunk_rows=16, runs_per_chunk=runs)
        return [frozenset(i for _, a, b in c for i in range(a, b)) for c in plan]

    old = [groups(e, 1) for e in range(3)]
    assert old[0] == old[1] == old[2] and old[0][0] == frozenset(range(16))
    new = [groups(e, 4) for e in range(3)]
    assert all(sorted(i for g in plan for i in g) == list(range(240)) for plan in new)
    spans = [max(g) - min(g) for g in new[0]]
    assert sorted(spans)[len(spans) // 2] > 60  # a typical chunk reaches across a quarter of the split
    together = [{frozenset((i, j)) for g in plan for i in g for j in g if i < j} for plan in new]
    assert len(together[0] & together[1]) < 0.5 * len(together[0])  # most pairs meet in one epoch only


def test_close_mosaic_preset_has_no_mosaic() -> None:
    assert preset_for_epoch("yolov8", 89, 100, 10) == "yolov8"
    assert preset_for_epoch("yolov8", 90, 100, 10) == "yolov8-close"
    assert preset_for_epoch("val", 99, 100, 10) == "val"
    assert get_preset("yolov8-close").mosaic == 0.0
    rows = make_rows(12, (200, 130), instances=1)
    closed = augment_rows(rows, preset="yolov8-close", imgsz=128, rng=np.random.default_rng(0))
    assert max(s.num_instances for s in closed) <= 1  # one source image per sample
    mosaic = augment_rows(rows, preset="yolov8", imgsz=128, rng=np.random.default_rng(0), buffer=MosaicBuffer(12))
    assert max(s.num_instances for s in mosaic) > 1  # several source images per sample
    with pytest.raises(AugmentError, match="unknown augmentation preset 'nope'"):
        get_preset("nope")


def test_mosaic_buffer_is_bounded() -> None:
    buffer = MosaicBuffer(3)
    augment_rows(make_rows(10, (64, 48)), preset="yolov8", imgsz=64, rng=np.random.default_rng(0), buffer=buffer)
    assert len(buffer) == 3


def test_annotations_crowd_skipped_and_bad_input_refused() -> None:
    row = make_row(5, (100, 80), instances=2, crowd=True)
    cls, segs = instances_from_annotations(row["annotations"], record="5")
    assert len(cls) == 2 and segs.shape == (2, 1000, 2)
    bad = [{"id": 1, "category": 80, "polygons": [[0, 0, 10, 0, 10, 10]]}]
    with pytest.raises(AnnotationError, match="image 5, annotation 1: category 80 is outside 0..79"):
        instances_from_annotations(bad, record="5")
    odd = [{"id": 2, "category": 1, "polygons": [[0, 0, 10, 0, 10]]}]
    with pytest.raises(AnnotationError, match="odd number of coordinates"):
        instances_from_annotations(odd, record="5")


def test_multi_part_polygon_rasterises_both_parts_without_bridge() -> None:
    a = [8, 8, 40, 8, 40, 40, 8, 40]
    b = [x + 60 if i % 2 == 0 else x for i, x in enumerate(a)]
    cls, segs = instances_from_annotations([{"id": 1, "category": 3, "polygons": [a, b]}], record="m")
    masks, _ = overlap_map(segs, (64, 128))
    assert masks.sum() == 2 * 8 * 8  # two 32x32 squares at 1/4, nothing between them
    assert masks[:, 11:16].sum() == 0


def test_fast_axis_aligned_warp_matches_general_warp() -> None:
    from cocoseg.data.augment import warp_affine

    image = load_letterboxed(make_row(2, (200, 130), instances=3), (256, 256)).image
    matrix = np.array([[1.3, 0.0, -20.3], [0.0, 1.3, 7.6], [0.0, 0.0, 1.0]])
    fast = warp_affine(image, matrix, (200, 240)).astype(int)
    tiny = np.array([[1.3, 1e-12, -20.3], [1e-12, 1.3, 7.6], [0.0, 0.0, 1.0]])  # forces the general path
    general = warp_affine(image, tiny, (200, 240)).astype(int)
    assert fast.shape == general.shape == (200, 240, 3)
    assert np.abs(fast - general)[2:-2, 2:-2].mean() < 2.0


def test_colour_matrix_gains() -> None:
    from cocoseg.data.augment import colour_matrix

    np.testing.assert_allclose(colour_matrix(np.ones(3)), np.eye(3), atol=1e-12)
    grey = np.full(3, 100.0)
    np.testing.assert_allclose(colour_matrix(np.array([1.01, 1.6, 1.0])) @ grey, grey, atol=1e-9)  # grey stays grey
    np.testing.assert_allclose(colour_matrix(np.array([1.0, 1.0, 1.3])) @ grey, grey * 1.3)  # value scales
    red = np.array([200.0, 50.0, 50.0])
    less = colour_matrix(np.array([1.0, 0.3, 1.0])) @ red
    assert np.ptp(less) < np.ptp(red) * 0.31  # saturation shrinks the chroma


def test_stage_accepts_arrow_numpy_and_row_batches() -> None:
    import pyarrow as pa

    from cocoseg.data.schema import SNAPSHOT_SCHEMA

    rows = make_rows(4, (80, 60))
    table = pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA)
    columns = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}  # Ray "numpy"
    outs = [AugmentBatch(preset="val", imgsz=64, epoch=0)(b) for b in (table, columns, rows)]
    for out in outs[1:]:
        assert np.array_equal(out["image"], outs[0]["image"]) and np.array_equal(out["masks"], outs[0]["masks"])
        assert list(out["labels"]) == list(outs[0]["labels"])
    assert outs[0]["image"].shape == (4, 64, 64, 3) and int(outs[0]["masks"].max()) == 2
