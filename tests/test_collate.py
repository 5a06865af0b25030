"""Collation into TrainBatch / ValBatch, overlap maps in instance order, mapping back to originals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from augment_rows import make_row, make_rows

from cocoseg.data.augment import load_letterboxed
from cocoseg.data.collate import collate_train, collate_val, labels_array
from cocoseg.data.instances import Sample, fill_polygon, format_sample, overlap_map, resample_polygon
from cocoseg.data.stage import AugmentBatch, stack_rows
from cocoseg.structures import SegTargets, TrainBatch


def _square(x0: float, y0: float, size: float, k: int = 1000) -> np.ndarray:
    from cocoseg.data.instances import resample_polygon

    return resample_polygon(np.float32([[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size]]), k)


@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_overlap_map_equals_full_canvas_rasterisation(ratio: int) -> None:
    """Each polygon is filled inside its own box only; the map equals filling every polygon on the
    whole canvas and painting largest first, for shapes partly off the image too."""
    gen = np.random.default_rng(4)
    segments = []
    for _ in range(12):
        centre, radius = gen.uniform(-10, 110, 2), gen.uniform(3, 30)
        angles = np.sort(gen.uniform(0, 2 * np.pi, 9))
        ring = centre + radius * gen.uniform(0.5, 1.0, (9, 1)) * np.stack([np.cos(angles), np.sin(angles)], 1)
        segments.append(resample_polygon(ring.astype(np.float32), 64))
    segments = np.stack(segments)
    hw = (96, 104)
    got, order = overlap_map(segments, hw, ratio)
    small = (hw[0] // ratio, hw[1] // ratio)
    full = np.stack([fill_polygon(seg / np.float32(ratio), small) for seg in segments])
    want_order = np.argsort(-full.reshape(len(full), -1).sum(1), kind="stable")
    want = np.zeros(small, np.int32)
    for rank, i in enumerate(want_order):
        want[full[i]] = rank + 1
    assert got.shape == small and got.dtype == np.uint8
    assert order.tolist() == want_order.tolist() and np.array_equal(got, want)
    assert 0 < (got > 0).mean() < 1


def test_overlap_map_paints_larger_first_and_labels_follow() -> None:
    # instance 0 small (on top of the big one), instance 1 big, instance 2 medium elsewhere
    segments = np.stack([_square(40, 40, 16), _square(16, 16, 80), _square(100, 100, 24)])
    sample = Sample(np.zeros((128, 128, 3), np.uint8), np.int64([7, 3, 5]), segments)
    masks, order = overlap_map(segments, (128, 128))
    assert order.tolist() == [1, 2, 0]  # by area: big, medium, small
    row = format_sample(sample)
    assert row["labels"][:, 0].tolist() == [3, 5, 7]  # classes reordered to match map values
    assert set(np.unique(row["masks"]).tolist()) == {0, 1, 2, 3}
    assert (row["masks"] == 3).sum() == 16  # the small square (4x4 cells) wins where it overlaps
    assert (row["masks"] == 1).sum() == 20 * 20 - 16
    for k in range(3):  # each label's box is the extent of its own map value (the big one is
        ys, xs = np.nonzero(row["masks"] == k + 1)  # partly covered, but its extent is unchanged)
        cx, cy, w, h = row["labels"][k, 1:] * 128
        assert xs.min() * 4 == pytest.approx(cx - w / 2, abs=1) and (xs.max() + 1) * 4 == pytest.approx(cx + w / 2, abs=1)
        assert ys.min() * 4 == pytest.approx(cy - h / 2, abs=1) and (ys.max() + 1) * 4 == pytest.approx(cy + h / 2, abs=1)


def test_collate_train_shapes_dtypes_and_instance_index() -> None:
    rows = make_rows(3, (160, 120), instances=2) + [make_row(9, (160, 120), instances=0)]
    batch = AugmentBatch(preset="yolov8-close", imgsz=96, seed=0, epoch=0)(rows)
    tb = collate_train(batch)
    assert isinstance(tb, TrainBatch) and isinstance(tb.targets, SegTargets)
    assert tb.images.shape == (4, 3, 96, 96) and tb.images.dtype == torch.uint8
    assert tb.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(tb.images[1].permute(1, 2, 0), torch.from_numpy(batch["image"][1]))
    t = tb.targets
    assert t.masks.shape == (4, 24, 24) and t.masks.dtype == torch.uint8
    n = t.num_instances
    assert t.batch_idx.shape == (n,) and t.batch_idx.dtype == torch.int64
    assert t.cls.dtype == torch.int64 and t.boxes_cxcywh_norm.shape == (n, 4)
    assert t.boxes_cxcywh_norm.dtype == torch.float32
    assert bool(((t.boxes_cxcywh_norm >= 0) & (t.boxes_cxcywh_norm <= 1)).all())
    assert 3 not in t.batch_idx.tolist() and int(t.masks[3].max()) == 0  # the empty image
    for b in range(4):  # map values 1..n_b <-> the b-th image's rows, in order
        n_b = int((t.batch_idx == b).sum())
        assert set(t.masks[b].unique().tolist()) <= set(range(n_b + 1))
        assert int(t.masks[b].max()) == n_b  # no affine here: every instance keeps some cells
    assert tb.image_ids.tolist() == [int(i) for i in batch["image_id"]]


def test_labels_bytes_and_arrays_agree() -> None:
    labels = np.arange(10, dtype=np.float32).reshape(2, 5)
    assert np.array_equal(labels_array(labels.tobytes()), labels)
    assert labels_array(b"").shape == (0, 5)
    empty = stack_rows([], 64)
    assert empty["image"].shape == (0, 64, 64, 3)


def test_val_collate_maps_boxes_back_to_original_pixels() -> None:
    rows = [make_row(i + 1, size, instances=2) for i, size in enumerate([(200, 130), (90, 160), (64, 64)])]
    batch = AugmentBatch(preset="val", imgsz=128, seed=0, epoch=0)(rows)
    vb = collate_val(batch)
    assert vb.images.shape == (3, 3, 128, 128)
    assert vb.orig_hw.tolist() == [[130, 200], [160, 90], [64, 64]]
    assert vb.image_ids.tolist() == [1, 2, 3]
    for i, row in enumerate(rows):
        sel = vb.targets.batch_idx == i
        cxcywh = vb.targets.boxes_cxcywh_norm[sel].numpy() * 128
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
        back = vb.boxes_to_original(i, xyxy)
        truth = np.array([[a["bbox_xywh"][0], a["bbox_xywh"][1], a["bbox_xywh"][0] + a["bbox_xywh"][2],
                           a["bbox_xywh"][1] + a["bbox_xywh"][3]] for a in row["annotations"]], np.float32)
        # compare as sets: labels are in mask-area order, annotations in file order
        dist = np.abs(back[:, None, :] - truth[None, :, :]).max(-1).min(1)
        assert dist.max() <= 1.0, (back, truth)


def test_val_batch_carries_the_stages_letterbox_to_the_predictor() -> None:
    """The geometry the stage letterboxed each image with reaches the ValBatch whole (through the
    float64 column, bit for bit) and is what the predictor maps detections back with."""
    from cocoseg.inference import Predictor
    from cocoseg.model import build_model
    from cocoseg.model.postprocess import postprocess
    from cocoseg.structures import LetterboxParams, letterbox_params

    rows = [make_row(i + 1, size, instances=2) for i, size in enumerate([(200, 130), (90, 161), (64, 64)])]
    batch = AugmentBatch(preset="val", imgsz=64, seed=0, epoch=0)(rows)
    assert batch["letterbox"].shape == (3, 9) and batch["letterbox"].dtype == np.float64
    vb = collate_val(batch)
    assert vb.letterboxes == tuple(letterbox_params((r["height"], r["width"]), (64, 64)) for r in rows)
    assert all(LetterboxParams.from_array(lb.to_array()) == lb for lb in vb.letterboxes)
    torch.manual_seed(0)
    model = build_model("n", 3)
    with torch.no_grad():  # class 1 pushed up, so it detects things
        for branch in model.head.cv3:
            branch[-1].bias[1] = 3.0
    predictor = Predictor(model, class_names=[], imgsz=64).for_evaluation()
    pred, proto = predictor.forward(vb.images)
    mine = predictor.postprocess(pred, proto, vb.letterboxes, masks="none")
    skewed = [LetterboxParams(lb.orig_hw, lb.out_hw, lb.resized_hw, lb.gain, lb.pad_left + 8, lb.pad_top)
              for lb in vb.letterboxes]
    theirs = postprocess(pred, proto, letterboxes=skewed, conf=predictor.conf, masks="none")
    assert sum(len(d) for d in mine) > 0
    assert any(not torch.equal(a.boxes_xyxy, b.boxes_xyxy) for a, b in zip(mine, theirs, strict=True))
    flipped = AugmentBatch(preset="yolov8-close", imgsz=64, seed=0, epoch=0)(make_rows(2, (80, 60)))["letterbox"]
    assert flipped.shape == (2, 9) and np.isnan(flipped).any()


def test_val_collate_refuses_augmented_rows() -> None:
    batch = AugmentBatch(preset="yolov8-close", imgsz=64, seed=0, epoch=0)(make_rows(2, (80, 60)))
    with pytest.raises(ValueError, match="needs rows of the 'val' preset"):
        collate_val(batch)


def test_letterboxed_sample_records_its_params() -> None:
    smp = load_letterboxed(make_row(1, (200, 100)), (128, 128))
    lb = smp.letterbox
    assert lb.gain == pytest.approx(0.64) and lb.pad_left == 0 and lb.pad_top == 32


@pytest.mark.gpu
def test_collated_batch_moves_to_cuda_channels_last() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    batch = AugmentBatch(preset="yolov8-close", imgsz=64, seed=0, epoch=0)(make_rows(2, (80, 60)))
    tb = collate_train(batch).to("cuda", non_blocking=True)
    assert tb.images.is_cuda and tb.images.is_contiguous(memory_format=torch.channels_last)
    assert tb.targets.masks.is_cuda and tb.targets.masks.dtype == torch.uint8
