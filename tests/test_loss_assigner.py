"""Task-aligned assigner: hand-checked cases, invariants on random batches, and a golden."""

from __future__ import annotations

import pytest
import torch
from _golden import check_golden

from cocoseg.loss import TaskAlignedAssigner
from cocoseg.loss.boxes import bbox_ciou, make_anchors

STRIDES = (8.0, 16.0, 32.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _anchors_px(height: int = 64, width: int = 64) -> torch.Tensor:
    sizes = [(height // int(s), width // int(s)) for s in STRIDES]
    points, stride = make_anchors(sizes, STRIDES)
    return points * stride  # (A, 2) pixels


def test_anchor_layout_is_p3_first_row_major() -> None:
    points = _anchors_px(64, 32)  # P3 8x4, P4 4x2, P5 2x1
    assert points.shape == (32 + 8 + 2, 2)
    assert points[:5].tolist() == [[4, 4], [12, 4], [20, 4], [28, 4], [4, 12]]
    assert points[32].tolist() == [8, 8] and points[-1].tolist() == [16, 48]


def test_single_box_perfect_predictions_hand_checked() -> None:
    """One box (0,0)-(32,32); every prediction is that box, so CIoU = 1 and the alignment is
    sqrt(score). The 10 best-scoring anchors inside the box (21 of them) become positives and the
    best one gets target score 1."""
    points = _anchors_px()
    num_anchors = points.shape[0]
    gt_box = torch.tensor([0.0, 0.0, 32.0, 32.0])
    inside = ((points > 0) & (points < 32)).all(1)
    assert int(inside.sum()) == 16 + 4 + 1
    probs = torch.linspace(0.01, 0.9, num_anchors)[torch.randperm(num_anchors, generator=torch.Generator().manual_seed(3))]
    scores = torch.zeros(1, num_anchors, 3)
    scores[0, :, 2] = probs
    out = TaskAlignedAssigner(num_classes=3)(scores, gt_box.expand(1, num_anchors, 4).clone(), points,
                                             torch.tensor([[2]]), gt_box.view(1, 1, 4), torch.tensor([[True]]))
    candidate_probs = torch.where(inside, probs, torch.zeros_like(probs))
    expected_pos = candidate_probs.topk(10).indices
    assert sorted(out.fg_mask[0].nonzero().view(-1).tolist()) == sorted(expected_pos.tolist())
    assert (out.labels[0, out.fg_mask[0]] == 2).all()
    expected_score = probs[expected_pos].sqrt() / probs[expected_pos].sqrt().max()
    torch.testing.assert_close(out.scores[0, expected_pos, 2], expected_score)
    assert out.scores[0, :, :2].abs().sum() == 0 and out.scores[0, ~out.fg_mask[0]].abs().sum() == 0
    torch.testing.assert_close(out.boxes_xyxy[0, out.fg_mask[0]], gt_box.expand(10, 4))


def test_anchor_claimed_twice_goes_to_larger_overlap() -> None:
    """Two nested boxes share every anchor of the small one; predictions equal the small box, so
    shared anchors go to the small box (CIoU 1) and the big box keeps only the others."""
    points = _anchors_px()
    num_anchors = points.shape[0]
    small = torch.tensor([16.0, 16.0, 48.0, 48.0])
    big = torch.tensor([0.0, 0.0, 64.0, 64.0])
    scores = torch.full((1, num_anchors, 1), 0.5)
    out = TaskAlignedAssigner(num_classes=1, topk=30)(
        scores, small.expand(1, num_anchors, 4).clone(), points, torch.tensor([[0, 0]]),
        torch.stack((big, small))[None], torch.tensor([[True, True]]))
    in_small = ((points > 16) & (points < 48)).all(1)
    assert (out.gt_index[0, in_small & out.fg_mask[0]] == 1).all()
    assert int((out.fg_mask[0] & in_small).sum()) == int(in_small.sum())  # all 21 < topk 30
    assert (out.gt_index[0, out.fg_mask[0] & ~in_small] == 0).all()


def _random_case(seed: int, batch: int = 3, max_gt: int = 4, num_classes: int = 5):
    gen = torch.Generator().manual_seed(seed)
    points = _anchors_px()
    num_anchors = points.shape[0]
    xy1 = torch.rand(batch, max_gt, 2, generator=gen) * 40
    wh = 8 + torch.rand(batch, max_gt, 2, generator=gen) * 24
    gt_boxes = torch.cat((xy1, (xy1 + wh).clamp(max=64)), -1)
    counts = torch.tensor([max_gt, 1, 0][:batch])
    valid = torch.arange(max_gt)[None] < counts[:, None]
    gt_boxes = gt_boxes * valid[..., None]
    labels = torch.randint(0, num_classes, (batch, max_gt), generator=gen) * valid
    centre_jitter = (torch.rand(batch, num_anchors, 2, generator=gen) - 0.5) * 8
    half = 4 + torch.rand(batch, num_anchors, 2, generator=gen) * 12
    centre = points + centre_jitter
    pred_boxes = torch.cat((centre - half, centre + half), -1)
    scores = torch.rand(batch, num_anchors, num_classes, generator=gen)
    return scores, pred_boxes, points, labels, gt_boxes, valid


def test_invariants_on_random_batches() -> None:
    for seed in range(5):
        scores, pred_boxes, points, labels, gt_boxes, valid = _random_case(seed)
        out = TaskAlignedAssigner(num_classes=5, topk=10)(scores, pred_boxes, points, labels, gt_boxes, valid)
        for b in range(scores.shape[0]):
            fg = out.fg_mask[b]
            assert valid[b, out.gt_index[b, fg]].all(), "a padded gt row got anchors"
            box = out.boxes_xyxy[b, fg]
            p = points[fg]
            assert ((p > box[:, :2]) & (p < box[:, 2:])).all(), "a positive lies outside its box"
            counts = torch.bincount(out.gt_index[b, fg], minlength=gt_boxes.shape[1])
            assert (counts <= 10).all()
            assert (out.labels[b, fg] == labels[b, out.gt_index[b, fg]]).all()
            assert ((out.scores[b] > 0).sum(-1) <= 1).all()
            assert (out.scores[b, fg].max(-1).values <= 1 + 1e-6).all()
        assert not out.fg_mask[2].any(), "an image without boxes must be all background"
    empty = TaskAlignedAssigner(num_classes=5)(scores, pred_boxes, points, labels[:, :0], gt_boxes[:, :0],
                                                valid[:, :0])
    assert not empty.fg_mask.any() and empty.scores.sum() == 0


def test_ciou_known_values() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(bbox_ciou(a, a), torch.ones(1), atol=1e-6, rtol=0)
    # Same shape (v = 0), shifted by 5: IoU = 50/150, rho^2 = 25, c^2 = 15^2 + 10^2.
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0]])
    torch.testing.assert_close(bbox_ciou(a, b), torch.tensor([50 / 150 - 25 / 325]), atol=1e-5, rtol=0)


def test_assigner_golden() -> None:
    scores, pred_boxes, points, labels, gt_boxes, valid = _random_case(seed=11)
    out = TaskAlignedAssigner(num_classes=5)(scores, pred_boxes, points, labels, gt_boxes, valid)
    golden = {}
    for b in range(scores.shape[0]):
        fg = out.fg_mask[b].nonzero().view(-1)
        golden[f"image{b}"] = {
            "positives": fg.tolist(),
            "gt_index": out.gt_index[b, fg].tolist(),
            "labels": out.labels[b, fg].tolist(),
            "target_score": [round(float(v), 6) for v in out.scores[b, fg].max(-1).values],
        }
    check_golden("assigner", golden)
