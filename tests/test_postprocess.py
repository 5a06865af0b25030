"""Post-processing: decode, NMS (against a plain-Python reference), masks, inverse letterbox."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocoseg.data.letterbox import letterbox
from cocoseg.model.postprocess import (
    box_iou,
    decode,
    masks_to_original,
    nms,
    non_max_suppression,
    postprocess,
    process_masks,
    scale_boxes_to_original,
)
from cocoseg.structures import RawOutputs, letterbox_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_nms(boxes: list[list[float]], scores: list[float], thr: float) -> list[int]:
    """Textbook greedy NMS in plain Python."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def test_nms_matches_reference_on_random_boxes() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(5):
        xy = torch.rand(300, 2, generator=gen) * 200
        wh = 5 + torch.rand(300, 2, generator=gen) * 60
        boxes = torch.cat((xy, xy + wh), 1).double()
        scores = torch.rand(300, generator=gen).double()
        thr = (0.3, 0.5, 0.7, 0.45, 0.6)[trial]
        assert nms(boxes, scores, thr).tolist() == _reference_nms(boxes.tolist(), scores.tolist(), thr)
    assert nms(boxes, scores, 0.5, max_keep=7).tolist() == _reference_nms(boxes.tolist(), scores.tolist(), 0.5)[:7]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def _pred(rows: list[tuple[float, float, float, float, dict[int, float]]], nc: int = 3, nm: int = 2) -> torch.Tensor:
    """(1, 4 + nc + nm, A) eval-layout tensor from (cx, cy, w, h, {class: prob}) rows."""
    pred = torch.zeros(1, 4 + nc + nm, len(rows))
    for a, (cx, cy, w, h, probs) in enumerate(rows):
        pred[0, :4, a] = torch.tensor([cx, cy, w, h])
        for c, p in probs.items():
            pred[0, 4 + c, a] = p
        pred[0, 4 + nc:, a] = torch.tensor([a, -a], dtype=torch.float32)  # coefficients identify the anchor
    return pred


def test_class_aware_multilabel_nms_and_thresholds() -> None:
    pred = _pred([(50, 50, 20, 20, {0: 0.9, 1: 0.6}),   # two labels above conf
                  (51, 50, 20, 20, {0: 0.8}),           # overlaps anchor 0, same class: suppressed
                  (52, 50, 20, 20, {2: 0.7}),           # overlaps, other class: kept (class-aware)
                  (150, 150, 10, 10, {1: 0.0005})])     # below conf 0.001
    rows = non_max_suppression(pred, num_masks=2)[0]
    assert rows[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert rows[:, 5].tolist() == [0, 2, 1]
    assert rows[0, :4].tolist() == [40, 40, 60, 60]
    assert rows[:, 6].tolist() == [0, 2, 0]  # the coefficients travel with their anchor
    single = non_max_suppression(pred, num_masks=2, multi_label=False, conf=0.25)[0]
    assert single[:, 5].tolist() == [0, 2]
    agnostic = non_max_suppression(pred, num_masks=2, agnostic=True)[0]
    assert agnostic[:, 5].tolist() == [0]
    assert non_max_suppression(pred, num_masks=2, max_det=2)[0].shape == (2, 8)


def test_decode_peaked_distributions() -> None:
    """DFL logits peaked on bin 2 (left/top) and bin 3 (right/bottom): every box is the anchor
    point -2/+3 cells, times the level stride."""
    nc, height, width = 2, 64, 32
    feats = []
    for s in (8, 16, 32):
        f = torch.zeros(1, 64 + nc, height // s, width // s)
        f[:, 0 * 16 + 2] = f[:, 1 * 16 + 2] = f[:, 2 * 16 + 3] = f[:, 3 * 16 + 3] = 50.0
        feats.append(f)
    num_anchors = 32 + 8 + 2
    pred, proto = decode(RawOutputs(feats, torch.zeros(1, 32, num_anchors), torch.zeros(1, 32, 16, 8)))
    assert pred.shape == (1, 4 + nc + 32, num_anchors)
    # First P3 anchor at (4, 4) px: box (4-16, 4-16, 4+24, 4+24) -> centre (8, 8), size 40.
    torch.testing.assert_close(pred[0, :4, 0], torch.tensor([8.0, 8.0, 40.0, 40.0]), atol=1e-3, rtol=0)
    # Last P5 anchor at (16, 48) px, stride 32: centre (16+16, 48+16), size 5*32.
    torch.testing.assert_close(pred[0, :4, -1], torch.tensor([32.0, 64.0, 160.0, 160.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(pred[0, 4:6], torch.full((2, num_anchors), 0.5))


def test_process_masks_crops_to_box_and_thresholds() -> None:
    proto = torch.zeros(2, 8, 8)
    proto[0, 2:6, 2:6] = 1.0  # prototype 0: a 4x4 blob
    proto[1] = -1.0
    coeffs = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 16.0, 32.0]])  # input px (x4)
    low = process_masks(proto, coeffs, boxes, (32, 32), upsample=False)
    assert low.shape == (2, 8, 8)
    assert low[0].nonzero().tolist() == [[r, c] for r in range(2, 6) for c in range(2, 6)]
    assert low[1].nonzero().tolist() == [[r, c] for r in range(2, 6) for c in range(2, 4)]  # cropped at x < 4
    high = process_masks(proto, coeffs, boxes, (32, 32))
    assert high.shape == (2, 32, 32) and not high[1, :, 16:].any() and high[0, 16, 16]
    assert not high[0, 0].any()


@pytest.mark.parametrize("orig_hw", [(480, 640), (427, 640), (640, 359), (100, 100), (1000, 300)])
def test_letterbox_round_trip(orig_hw: tuple[int, int]) -> None:
    h0, w0 = orig_hw
    image = np.zeros((h0, w0, 3), dtype=np.uint8)
    y1, y2, x1, x2 = h0 // 4, h0 // 2, w0 // 3, (3 * w0) // 4
    image[y1:y2, x1:x2] = 255
    boxed, params = letterbox(image, (320, 320))
    assert boxed.shape == (320, 320, 3)
    assert params == letterbox_params(orig_hw, (320, 320))  # the data side and the inverse agree
    gain, (left, top) = params.gain, params.pad
    assert (boxed[:int(top)] == 114).all() and (boxed[:, :int(left)] == 114).all()
    # Box: forward by hand, back with scale_boxes_to_original.
    box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64)
    fwd = box * gain + torch.tensor([left, top, left, top])
    torch.testing.assert_close(scale_boxes_to_original(fwd, params), box)
    # Mask: the white rectangle in the letterboxed frame mapped back covers the original one.
    mask = torch.from_numpy(boxed[..., 0] > 127)[None]
    back = masks_to_original(mask, params)[0].numpy()
    truth = image[..., 0] > 127
    iou = (back & truth).sum() / (back | truth).sum()
    assert back.shape == truth.shape and iou > 0.95


def test_postprocess_end_to_end_to_original_pixels() -> None:
    """One confident anchor in a 64x64 letterboxed input of a 32x64 (h x w) original: the box and
    mask come back in original pixels (gain 1, 16 px padding on top)."""
    nc = 3
    pred = torch.zeros(1, 4 + nc + 32, 5)
    pred[0, :4, 0] = torch.tensor([32.0, 32.0, 16.0, 16.0])  # box 24..40 in the input
    pred[0, 4 + 1, 0] = 0.95
    proto = torch.zeros(1, 32, 16, 16)
    proto[0, 0] = 1.0
    pred[0, 4 + nc, 0] = 3.0  # logit 3 everywhere, so the mask is exactly the box
    (det,) = postprocess(pred, proto, orig_hw=[(32, 64)])
    assert len(det) == 1 and det.classes.tolist() == [1]
    torch.testing.assert_close(det.boxes_xyxy, torch.tensor([[24.0, 8.0, 40.0, 24.0]]))
    assert det.masks.shape == (1, 32, 64)
    ys, xs = det.masks[0].nonzero(as_tuple=True)
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())) == (24, 39, 8, 23)
    (none,) = postprocess(torch.zeros(1, 4 + nc + 32, 5), proto)
    assert len(none) == 0 and none.masks.shape == (0, 64, 64)


def test_box_iou() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 3, 0.0]]))


def test_nms_over_several_blocks_matches_reference() -> None:
    """More candidates than one block (NMS_BLOCK): the block-wise solution is still the greedy one."""
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(1500, 2, generator=gen) * 300
    boxes = torch.cat((xy, xy + 10 + torch.rand(1500, 2, generator=gen) * 90), 1).double()
    scores = torch.rand(1500, generator=gen).double()
    expected = _reference_nms(boxes.tolist(), scores.tolist(), 0.6)
    assert len(expected) > 600  # the kept boxes span more than one block
    assert nms(boxes, scores, 0.6).tolist() == expected
    assert nms(boxes, scores, 0.6, max_keep=300).tolist() == expected[:300]


@pytest.mark.parametrize("orig_hw", [(64, 64), (48, 80), (100, 37), (130, 200)])
def test_box_cropped_masks_equal_the_dense_spec_path(orig_hw: tuple[int, int]) -> None:
    """mask_crops (work inside each box only) == upsample -> crop -> > 0 -> un-pad -> resize on
    the full frame, and the RLEs equal pycocotools' encoding of the dense masks."""
    from pycocotools import mask as mask_utils

    from cocoseg.model.postprocess import encode_rle, mask_crops, paste_masks

    gen = torch.Generator().manual_seed(sum(orig_hw))
    lb = letterbox_params(orig_hw, (64, 64))
    proto = torch.randn(32, 16, 16, generator=gen)
    coeffs = torch.randn(40, 32, generator=gen)
    xy = torch.rand(40, 2, generator=gen) * 70 - 5
    boxes = torch.cat((xy, xy + torch.rand(40, 2, generator=gen) * 50), 1)
    dense = masks_to_original(process_masks(proto, coeffs, boxes, (64, 64)), lb)
    crops = mask_crops(proto, coeffs, boxes, lb)
    fast = paste_masks(crops, lb.orig_hw)
    assert dense.any() and (dense != fast).sum() <= 2  # bit-level float noise at most, on a resize tie
    expected = mask_utils.encode(np.asfortranarray(fast.numpy().transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in encode_rle(crops, lb.orig_hw)] == [r["counts"].decode() for r in expected]
    # Uncompressed (the served answer): each mask's column-major runs, the first of zeros.
    for rle, mask in zip(encode_rle(crops, lb.orig_hw, compressed=False), fast.numpy(), strict=True):
        flat = mask.flatten(order="F").astype(np.int8)
        runs = np.diff(np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))).tolist()
        assert rle == {"size": list(lb.orig_hw), "counts": [0] * int(flat[0]) + runs}


def test_postprocess_golden_on_a_seeded_input() -> None:
    """Boxes, scores, classes and mask areas/RLEs of a seeded eval output, letterboxed 96x64 -> 64."""
    from _golden import check_golden

    gen = torch.Generator().manual_seed(7)
    nc, anchors = 3, 84  # 8x8 + 4x4 + 2x2 at 64 px
    pred = torch.zeros(1, 4 + nc + 32, anchors)
    pred[0, :2] = torch.rand(2, anchors, generator=gen) * 64
    pred[0, 2:4] = 4 + torch.rand(2, anchors, generator=gen) * 30
    pred[0, 4:4 + nc] = torch.rand(nc, anchors, generator=gen) ** 3
    pred[0, 4 + nc:] = torch.randn(32, anchors, generator=gen)
    proto = torch.randn(1, 32, 16, 16, generator=gen)
    lb = letterbox_params((64, 96), (64, 64))
    (det,) = postprocess(pred, proto, letterboxes=[lb], conf=0.05, max_det=20)
    (rle,) = postprocess(pred, proto, letterboxes=[lb], conf=0.05, max_det=20, masks="rle")
    check_golden("postprocess_seeded", {
        "boxes_xyxy": [[round(v, 3) for v in b] for b in det.boxes_xyxy.tolist()],
        "scores": [round(v, 5) for v in det.scores.tolist()], "classes": det.classes.tolist(),
        "mask_areas": det.masks.sum((1, 2)).tolist(), "rle": [r["counts"] for r in rle.masks_rle]})
