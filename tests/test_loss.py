"""Segmentation loss: golden on a seeded batch, a per-instance loop reference, edge cases, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _golden import check_golden

from cocoseg.loss import SegmentationLoss, pad_targets
from cocoseg.loss.boxes import bbox_ciou, decode_distributions, distances_to_boxes, make_anchors
from cocoseg.structures import RawOutputs, SegTargets

NC = 6
HEIGHT, WIDTH = 96, 128  # not square, to catch swapped axes


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _seeded_batch(seed: int = 0, batch: int = 3) -> tuple[RawOutputs, SegTargets]:
    """Random raw outputs and targets with painted overlap maps (image 2 has no instances)."""
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, 64 + NC, HEIGHT // s, WIDTH // s, generator=gen) for s in (8, 16, 32)]
    for f in feats:  # class logits near the YOLOv8 prior, so scores are small as at the start of training
        f[:, 64:] -= 4.0
    num_anchors = sum(f.shape[2] * f.shape[3] for f in feats)
    coeffs = torch.randn(batch, 32, num_anchors, generator=gen)
    proto = torch.randn(batch, 32, HEIGHT // 4, WIDTH // 4, generator=gen)
    # (image, class, x1, y1, x2, y2) in pixels; image 0 has three (two overlapping), image 1 one.
    rows = [(0, 1, 8, 8, 72, 56), (0, 4, 40, 30, 110, 90), (0, 0, 90, 4, 124, 40), (1, 2, 20, 20, 100, 80)]
    masks = torch.zeros(batch, HEIGHT // 4, WIDTH // 4, dtype=torch.int32)
    slots = [0, 0, 0]
    for b, _, x1, y1, x2, y2 in rows:
        slots[b] += 1
        # An ellipse inside the box, painted in row order (later instances overwrite).
        yy, xx = torch.meshgrid(torch.arange(HEIGHT // 4) + 0.5, torch.arange(WIDTH // 4) + 0.5, indexing="ij")
        cx, cy, rx, ry = (x1 + x2) / 8, (y1 + y2) / 8, (x2 - x1) / 8, (y2 - y1) / 8
        masks[b][((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = slots[b]
    xyxy = torch.tensor([r[2:] for r in rows], dtype=torch.float32)
    norm = torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT], dtype=torch.float32)
    cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1) / norm
    targets = SegTargets(batch_idx=torch.tensor([r[0] for r in rows]), cls=torch.tensor([r[1] for r in rows]),
                         boxes_cxcywh_norm=cxcywh, masks=masks)
    return RawOutputs(feats, coeffs, proto), targets


def test_loss_golden_on_seeded_batch() -> None:
    outputs, targets = _seeded_batch()
    losses = SegmentationLoss(num_classes=NC)(outputs, targets)
    assert set(losses) == {"loss", "loss_box", "loss_mask", "loss_cls", "loss_dfl"}
    total = sum(float(losses[k]) for k in ("loss_box", "loss_mask", "loss_cls", "loss_dfl"))
    assert float(losses["loss"]) == pytest.approx(3 * total, rel=1e-6)  # B * sum of gained terms
    check_golden("loss_seeded_batch", {k: round(float(v), 6) for k, v in losses.items()})


def _loop_reference(outputs: RawOutputs, targets: SegTargets, criterion: SegmentationLoss) -> dict[str, float]:
    """The same loss written as plain loops over images and positive anchors (slow, obvious)."""
    feats, coeffs, proto = outputs
    batch = proto.shape[0]
    flat = torch.cat([f.flatten(2) for f in feats], 2).transpose(1, 2)
    pred_dist, pred_logits = flat[..., :64], flat[..., 64:]
    points, stride = make_anchors([f.shape[2:] for f in feats], [8, 16, 32])
    pred_boxes = distances_to_boxes(points, decode_distributions(pred_dist))
    labels, boxes, valid, _ = pad_targets(targets, batch, (HEIGHT, WIDTH))
    assigned = criterion.assigner(pred_logits.sigmoid(), pred_boxes * stride, points * stride, labels, boxes, valid)
    score_sum = max(float(assigned.scores.sum()), 1.0)
    cls = float(F.binary_cross_entropy_with_logits(pred_logits, assigned.scores, reduction="sum")) / score_sum
    box = dfl = mask = 0.0
    positives = 0
    for b in range(batch):
        for a in assigned.fg_mask[b].nonzero().view(-1).tolist():
            positives += 1
            w = float(assigned.scores[b, a].sum())
            target = assigned.boxes_xyxy[b, a] / stride[a]
            box += w * (1 - float(bbox_ciou(pred_boxes[b, a], target)))
            for side, dist in enumerate((points[a, 0] - target[0], points[a, 1] - target[1],
                                         target[2] - points[a, 0], target[3] - points[a, 1])):
                tau = min(max(float(dist), 0.0), 14.99)
                lo = math.floor(tau)
                logp = pred_dist[b, a, side * 16:(side + 1) * 16].log_softmax(0)
                dfl += w * (-(lo + 1 - tau) * float(logp[lo]) - (tau - lo) * float(logp[lo + 1])) / 4
            gt = (targets.masks[b] == int(assigned.gt_index[b, a]) + 1).float()
            logits = torch.einsum("k,khw->hw", coeffs[b, :, a], proto[b])
            bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
            x1, y1, x2, y2 = (assigned.boxes_xyxy[b, a] / 4).tolist()  # input px -> proto cells
            cols, rows = torch.arange(bce.shape[1]), torch.arange(bce.shape[0])
            keep = (((cols >= x1) & (cols < x2))[None, :] & ((rows >= y1) & (rows < y2))[:, None]).float()
            area = (x2 - x1) * (y2 - y1) / (bce.shape[0] * bce.shape[1])
            mask += float((bce * keep).mean()) / area
    return {"loss_box": 7.5 * box / score_sum, "loss_cls": 0.5 * cls, "loss_dfl": 1.5 * dfl / score_sum,
            "loss_mask": 7.5 * mask / max(positives, 1)}


def test_vectorised_loss_equals_loop_reference() -> None:
    outputs, targets = _seeded_batch(seed=5)
    criterion = SegmentationLoss(num_classes=NC)
    losses = criterion(outputs, targets)
    reference = _loop_reference(outputs, targets, criterion)
    for key, value in reference.items():
        assert float(losses[key]) == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_targets_are_grouped_per_image_in_row_order() -> None:
    targets = SegTargets(batch_idx=torch.tensor([1, 0, 1, 1]), cls=torch.tensor([3, 1, 2, 0]),
                         boxes_cxcywh_norm=torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 4),
                         masks=torch.zeros(3, 4, 4, dtype=torch.int32))
    labels, boxes, valid, slot = pad_targets(targets, 3, (32, 64))
    assert labels.tolist() == [[1, 0, 0], [3, 2, 0], [0, 0, 0]]
    assert valid.tolist() == [[True, False, False], [True, True, True], [False, False, False]]
    assert slot.tolist() == [0, 0, 1, 2]
    assert boxes[1, 0].tolist() == [16.0, 8.0, 48.0, 24.0]


def test_no_instances_gives_finite_loss_and_gradients() -> None:
    outputs, _ = _seeded_batch()
    params = [t.requires_grad_() for t in (*outputs.feats, outputs.mask_coeffs, outputs.proto)]
    empty = SegTargets(batch_idx=torch.zeros(0, dtype=torch.long), cls=torch.zeros(0, dtype=torch.long),
                       boxes_cxcywh_norm=torch.zeros(0, 4), masks=torch.zeros(3, HEIGHT // 4, WIDTH // 4,
                                                                                dtype=torch.int32))
    losses = SegmentationLoss(num_classes=NC)(outputs, empty)
    assert float(losses["loss_box"]) == 0 and float(losses["loss_mask"]) == 0 and float(losses["loss_dfl"]) == 0
    assert math.isfinite(float(losses["loss"].detach())) and float(losses["loss_cls"]) > 0
    losses["loss"].backward()
    assert all(p.grad is not None for p in params)


def test_gradients_reach_every_input_and_loss_falls_when_optimised() -> None:
    outputs, targets = _seeded_batch(seed=2)
    leaves = [t.clone().requires_grad_() for t in (*outputs.feats, outputs.mask_coeffs, outputs.proto)]
    criterion = SegmentationLoss(num_classes=NC)
    opt = torch.optim.Adam(leaves, lr=0.05)
    first = None
    for _ in range(15):
        losses = criterion(RawOutputs(leaves[:3], leaves[3], leaves[4]), targets)
        opt.zero_grad()
        losses["loss"].backward()
        if first is None:
            first = {k: float(v.detach()) for k, v in losses.items()}
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in leaves)
        opt.step()
    last = {k: float(v.detach()) for k, v in losses.items()}
    for key in ("loss", "loss_box", "loss_cls", "loss_dfl", "loss_mask"):
        assert last[key] < first[key], (key, first[key], last[key])


def test_wrong_channel_count_is_a_clear_error() -> None:
    outputs, targets = _seeded_batch()
    with pytest.raises(ValueError, match="channels"):
        SegmentationLoss(num_classes=80)(outputs, targets)


@pytest.mark.gpu
def test_cuda_loss_and_postprocess_match_cpu() -> None:
    """The same loss and post-processing on a GPU (the CPU path is covered above); skipped without CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from cocoseg.model.postprocess import decode, postprocess

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    outputs, targets = _seeded_batch(seed=5)
    criterion = SegmentationLoss(num_classes=NC)
    cpu = criterion(outputs, targets)
    cuda_outputs = RawOutputs([f.cuda() for f in outputs.feats], outputs.mask_coeffs.cuda(), outputs.proto.cuda())
    gpu = criterion(cuda_outputs, targets.to("cuda"))
    for key, value in cpu.items():
        assert float(gpu[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-5), key
    pred, proto = decode(outputs)
    (det_cpu,) = postprocess(pred[:1], proto[:1], conf=0.01)
    (det_gpu,) = postprocess(pred[:1].cuda(), proto[:1].cuda(), conf=0.01)
    torch.testing.assert_close(det_gpu.boxes_xyxy.cpu(), det_cpu.boxes_xyxy, atol=1e-3, rtol=0)
    assert (det_gpu.masks.cpu() != det_cpu.masks).float().mean() < 1e-3


def test_malformed_targets_are_a_clear_error() -> None:
    outputs, targets = _seeded_batch()
    bad = SegTargets(batch_idx=targets.batch_idx + 5, cls=targets.cls, boxes_cxcywh_norm=targets.boxes_cxcywh_norm,
                     masks=targets.masks)
    with pytest.raises(ValueError, match=r"batch_idx must lie in 0\.\.2"):
        SegmentationLoss(num_classes=NC)(outputs, bad)
    bad = SegTargets(batch_idx=targets.batch_idx, cls=targets.cls, boxes_cxcywh_norm=targets.boxes_cxcywh_norm,
                     masks=targets.masks[:1])
    with pytest.raises(ValueError, match="masks must be"):
        SegmentationLoss(num_classes=NC)(outputs, bad)


def test_bf16_outputs_give_the_float32_loss() -> None:
    """Under autocast the head emits bf16; the loss upcasts, so targets keep full precision."""
    outputs, targets = _seeded_batch(seed=5)
    half = RawOutputs([f.bfloat16().float() for f in outputs.feats], outputs.mask_coeffs.bfloat16().float(),
                      outputs.proto.bfloat16().float())
    as_bf16 = RawOutputs([f.bfloat16() for f in outputs.feats], outputs.mask_coeffs.bfloat16(),
                         outputs.proto.bfloat16())
    criterion = SegmentationLoss(num_classes=NC)
    expected, got = criterion(half, targets), criterion(as_bf16, targets)
    for key in expected:
        assert got[key].dtype == torch.float32
        assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-6), key


def test_fused_class_and_mask_terms_match_dense_autograd() -> None:
    """The hand-written functions give the dense formula's value and gradients (float64), and
    their backward passes a finite-difference gradcheck."""
    from cocoseg.loss.fused import MaskGroup, cropped_mask_bce, sparse_target_bce

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    index = (torch.tensor([0, 1, 1]), torch.tensor([2, 0, 6]), torch.tensor([4, 1, 1]))
    weight = torch.tensor([0.3, 0.9, 0.05], dtype=torch.float64)
    dense_t = torch.zeros(2, 7, 5, dtype=torch.float64)
    dense_t[index] = weight
    want = F.binary_cross_entropy_with_logits(logits, dense_t, reduction="sum")
    got = sparse_target_bce(logits, logits.detach().sigmoid(), index, weight)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0])
    assert torch.autograd.gradcheck(lambda x: sparse_target_bce(x, x.detach().sigmoid(), index, weight), (logits,))

    coeffs = torch.randn(2, 4, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    proto = torch.randn(2, 4, 6, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    gt_maps = torch.randint(0, 3, (2, 6, 8), generator=gen)
    groups = [MaskGroup(0, 0, torch.tensor([1, 4]), 1, 5, 2, 7, 0.5),
              MaskGroup(0, 1, torch.tensor([3]), 0, 6, 0, 8, 0.25),
              MaskGroup(1, 1, torch.tensor([0, 2, 8]), 2, 3, 5, 6, 2.0)]
    dense = 0.0
    for g in groups:  # full-grid BCE, zeroed outside the crop, as the spec writes it
        full = torch.einsum("kn,nhw->khw", coeffs[g.b][:, g.anchors].T, proto[g.b])
        target = (gt_maps[g.b] == g.slot + 1).to(full.dtype).expand_as(full)
        keep = torch.zeros(6, 8, dtype=torch.float64)
        keep[g.y1:g.y2, g.x1:g.x2] = 1
        dense = dense + (F.binary_cross_entropy_with_logits(full, target, reduction="none") * keep).sum() * g.scale
    fused = cropped_mask_bce(coeffs, proto, gt_maps, groups)
    torch.testing.assert_close(fused, dense)
    for a, b in zip(torch.autograd.grad(fused, (coeffs, proto)), torch.autograd.grad(dense, (coeffs, proto)), strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda c, p: cropped_mask_bce(c, p, gt_maps, groups), (coeffs, proto))

    # Maps 2x finer than the grid (train.mask_ratio 2; 4x finer is mask_ratio 1): each cell's
    # target is the fraction of its 2 x 2 pixels that belong to the instance.
    fine = torch.randint(0, 3, (2, 12, 16), generator=gen, dtype=torch.int32).to(torch.uint8)
    dense = 0.0
    for g in groups:
        full = torch.einsum("kn,nhw->khw", coeffs[g.b][:, g.anchors].T, proto[g.b])
        target = F.avg_pool2d((fine[g.b] == g.slot + 1).to(full.dtype)[None], 2)[0].expand_as(full)
        keep = torch.zeros(6, 8, dtype=torch.float64)
        keep[g.y1:g.y2, g.x1:g.x2] = 1
        dense = dense + (F.binary_cross_entropy_with_logits(full, target, reduction="none") * keep).sum() * g.scale
    fused = cropped_mask_bce(coeffs, proto, fine, groups, 2)
    torch.testing.assert_close(fused, dense)
    for a, b in zip(torch.autograd.grad(fused, (coeffs, proto)), torch.autograd.grad(dense, (coeffs, proto)), strict=True):
        torch.testing.assert_close(a, b)


def test_loss_backward_under_autocast() -> None:
    """Inside an autocast region (as in the train step) the loss is still float32 and back-propagates
    to the bf16 outputs (the hand-written terms switch autocast off for their own math)."""
    outputs, targets = _seeded_batch(seed=5)
    leaves = [t.bfloat16().requires_grad_() for t in (*outputs.feats, outputs.mask_coeffs, outputs.proto)]
    criterion = SegmentationLoss(num_classes=NC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(RawOutputs(leaves[:3], leaves[3], leaves[4]), targets)
    assert losses["loss"].dtype == torch.float32
    grads = torch.autograd.grad(losses["loss"], leaves)
    assert all(g.dtype == torch.bfloat16 and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)
