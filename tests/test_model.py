"""Contract tests over every YOLOv8-seg variant (timm-style): shapes, finite outputs, gradients
reach every trainable parameter, parameter counts and GFLOPs equal the reference figures.

Small inputs (32 x 64) keep the x variant's forward + backward to a few seconds on 2 cores;
FLOPs at 640 are counted on the meta device (shapes only) and cross-checked on a real forward
of the n variant.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cocoseg.model import VARIANTS, ModelError, build_model, decode, decode_distances, make_anchors
from cocoseg.model.info import count_flops, model_info
from cocoseg.structures import RawOutputs

# One thread: on the shared 2-core machine, 2 threads ran up to 20x slower under load (spin-waiting).
torch.set_num_threads(1)

# Reference figures (spec section 13 / ../shared/reference/yolov8-seg-reference.json, measured
# on the reference implementation): parameters unfused, parameters fused, exact conv GFLOPs.
REFERENCE = {
    "n": (3_409_968, 3_404_320, 12.00),
    "s": (11_821_056, 11_810_560, 40.09),
    "m": (27_285_968, 27_268_704, 104.54),
    "l": (45_997_728, 45_973_568, 210.39),
    "x": (71_827_888, 71_797_696, 328.36),
}
HEAD_CHANNELS = {"n": (64, 128, 256), "s": (128, 256, 512), "m": (192, 384, 576),
                 "l": (256, 512, 512), "x": (320, 640, 640)}
# Multiples of 32, deliberately not square. The contract tests use the smallest useful size
# (P5 is 1 x 2) to keep the x variant's forward + backward cheap; the anchor-order test a larger one.
H, W = 32, 64
H_ORDER, W_ORDER = 64, 96


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so eval-mode checks do not pass by identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def test_variant_table_is_the_five_scales():
    assert list(VARIANTS) == ["n", "s", "m", "l", "x"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_contract(variant: str):
    """Train mode: shapes, finite, gradients everywhere; then eval mode: the inference layout."""
    torch.manual_seed(0)
    model = build_model(variant, 80)
    _check_train_mode(model, nc=80)
    model.zero_grad(set_to_none=True)
    _check_eval_mode(model, nc=80)


def _check_train_mode(model: torch.nn.Module, nc: int) -> None:
    model.train()
    images = torch.rand(2, 3, H, W)
    out = model(images)
    assert isinstance(out, RawOutputs)
    sizes = [(H // s, W // s) for s in (8, 16, 32)]
    anchors = sum(h * w for h, w in sizes)
    assert [tuple(f.shape) for f in out.feats] == [(2, 64 + nc, h, w) for h, w in sizes]
    assert tuple(out.mask_coeffs.shape) == (2, 32, anchors)
    assert tuple(out.proto.shape) == (2, 32, H // 4, W // 4)
    tensors = [*out.feats, out.mask_coeffs, out.proto]
    assert all(torch.isfinite(t).all() for t in tensors)
    # A random projection of every output, so no gradient can cancel by symmetry.
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in tensors)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    non_finite = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not non_finite, f"non-finite gradients: {non_finite}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["model.22.dfl.conv.weight"]  # the fixed DFL integral, never trained


def _check_eval_mode(model: torch.nn.Module, nc: int) -> None:
    _randomise_bn(model)
    model.eval()
    images = torch.rand(1, 3, H, W)
    with torch.no_grad():
        raw = model(images)
        train_raw = copy.deepcopy(model).train()(images)  # a copy: train mode updates BN statistics
    # One raw type in both modes (the mode changes BatchNorm only); decoding is decode()'s job.
    assert isinstance(raw, RawOutputs) and isinstance(train_raw, RawOutputs)
    assert [f.shape for f in raw.feats] == [f.shape for f in train_raw.feats]
    assert raw.mask_coeffs.shape == train_raw.mask_coeffs.shape and raw.proto.shape == train_raw.proto.shape
    pred, proto = decode(raw)
    assert proto is raw.proto
    anchors = sum((H // s) * (W // s) for s in (8, 16, 32))
    assert tuple(pred.shape) == (1, 4 + nc + 32, anchors)
    assert tuple(proto.shape) == (1, 32, H // 4, W // 4)
    assert torch.isfinite(pred).all() and torch.isfinite(proto).all()
    scores = pred[:, 4:4 + nc]
    assert scores.min() >= 0 and scores.max() <= 1
    # Widths and heights are positive and bounded by the DFL range (15 bins of the stride, both sides).
    assert (pred[:, 2:4] >= 0).all() and (pred[:, 2:4] <= 2 * 15 * 32).all()
    assert model.num_classes == nc and model.reg_max == 16 and model.num_masks == 32
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_other_class_count():
    torch.manual_seed(0)
    model = build_model("n", 3)
    _check_train_mode(model, nc=3)
    model.zero_grad(set_to_none=True)
    _check_eval_mode(model, nc=3)


def test_eval_anchor_order_is_p3_to_p5_row_major():
    """Class scores in pred at anchor index k equal sigmoid of the per-level map at the cell
    that a P3 -> P5, y-outer / x-inner flatten assigns to k; boxes decode around its centre."""
    torch.manual_seed(0)
    nc = 5
    model = build_model("n", nc)
    _randomise_bn(model)
    model.eval()
    images = torch.rand(1, 3, H_ORDER, W_ORDER)
    with torch.no_grad():
        pred, _ = decode(model(images))
        # Same network, the head's raw per-level maps (eval BN), from the captured neck outputs.
        feats = _neck_outputs(model, images)
        maps = [torch.cat((b(x), c(x)), 1) for b, c, x in zip(model.head.cv2, model.head.cv3, feats, strict=True)]
    offset = 0
    for stride, fmap in zip((8, 16, 32), maps, strict=True):
        h, w = fmap.shape[-2:]
        for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h // 2, w // 2)):
            k = offset + y * w + x
            expected = fmap[0, 64:, y, x].sigmoid()
            torch.testing.assert_close(pred[0, 4:4 + nc, k], expected, rtol=0, atol=1e-6)
            dist = model.head.dfl(fmap[0, :64, y, x].view(1, 64, 1))[0, :, 0]  # l, t, r, b (grid)
            cx = (x + 0.5 + (dist[2] - dist[0]) / 2) * stride
            cy = (y + 0.5 + (dist[3] - dist[1]) / 2) * stride
            torch.testing.assert_close(pred[0, 0, k], cx, rtol=0, atol=1e-3)
            torch.testing.assert_close(pred[0, 1, k], cy, rtol=0, atol=1e-3)
            torch.testing.assert_close(pred[0, 2, k], (dist[0] + dist[2]) * stride, rtol=0, atol=1e-3)
        offset += h * w
    assert offset == pred.shape[-1]


def _neck_outputs(model, images):
    """P3/P4/P5 neck outputs, captured with a forward hook on the head."""
    captured = {}
    handle = model.head.register_forward_pre_hook(lambda mod, args: captured.setdefault("feats", args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured["feats"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_neck_widths_match_the_reference(variant: str):
    with torch.device("meta"):
        model = build_model(variant)
    head = model.head
    assert tuple(branch[0].conv.in_channels for branch in head.cv2) == HEAD_CHANNELS[variant]


def test_make_anchors_and_decode():
    points, strides = make_anchors([(2, 3), (1, 2)], [8, 16])
    assert points.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5],
                               [0.5, 0.5], [1.5, 0.5]]
    assert strides.squeeze(1).tolist() == [8] * 6 + [16] * 2
    fmap = torch.zeros(1, 7, 4, 5, dtype=torch.float64)
    p2, s2 = make_anchors([fmap], torch.tensor([4.0]))
    assert p2.dtype == torch.float64 and p2.shape == (20, 2) and s2.shape == (20, 1)
    dist = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    anchor = torch.tensor([[10.0, 20.0]])
    assert decode_distances(dist, anchor, xywh=False).tolist() == [[9.0, 18.0, 13.0, 24.0]]
    assert decode_distances(dist, anchor, xywh=True).tolist() == [[11.0, 21.0, 4.0, 6.0]]


def test_head_bias_init():
    model = build_model("n", 80)
    for branch in model.head.cv2:
        assert torch.all(branch[-1].bias == 1.0)
    priors = [float(branch[-1].bias[0].detach()) for branch in model.head.cv3]
    assert priors == pytest.approx([-11.537, -10.150, -8.764], abs=1e-3)
    bn = model.model[0].bn
    assert bn.eps == 1e-3 and bn.momentum == 0.03


def test_fuse_keeps_outputs():
    torch.manual_seed(0)
    model = build_model("n", 80)
    _randomise_bn(model)
    model.eval()
    images = torch.rand(1, 3, H, W)
    with torch.no_grad():
        pred, proto = decode(model(images))
        model.fuse()
        pred_f, proto_f = decode(model(images))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == REFERENCE["n"][1]
    torch.testing.assert_close(pred_f, pred, rtol=0, atol=1e-3)
    torch.testing.assert_close(proto_f, proto, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_counts_and_gflops(variant: str):
    params, params_fused, gflops = REFERENCE[variant]
    info = model_info(variant, 80, 640)
    assert info.parameters == params
    assert info.parameters_fused == params_fused
    assert info.trainable_parameters == params - 16  # the fixed DFL weights
    assert info.gflops == pytest.approx(gflops, rel=0.01)


def test_flops_on_meta_equal_a_real_forward():
    """The meta-device count is what a real forward counts; FLOPs scale with the pixel count."""
    real = count_flops(build_model("n"), 64, 64)
    assert real * 100 == pytest.approx(model_info("n", 80, 640).gflops * 1e9, rel=1e-6)


def test_unknown_variant_and_bad_input():
    with pytest.raises(ModelError, match="unknown model variant 'q'"):
        build_model("q")
    with pytest.raises(ModelError, match="num_classes"):
        build_model("n", 0)
    model = build_model("n").eval()
    with pytest.raises(ModelError, match="multiples of 32"):
        model(torch.zeros(1, 3, 64, 50))
    with pytest.raises(ModelError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 64, 64))


@pytest.mark.gpu
def test_cuda_forward_matches_cpu():
    """The same logic on a GPU (the CPU path is covered above); skipped without CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = build_model("n", 80)
    _randomise_bn(model)
    model.eval()
    images = torch.rand(2, 3, H, W)
    with torch.no_grad():
        pred, proto = decode(model(images))
        pred_gpu, proto_gpu = decode(model.cuda()(images.cuda()))
    assert pred_gpu.device.type == "cuda" and model.stride.device.type == "cuda"
    torch.testing.assert_close(pred_gpu.cpu(), pred, rtol=0, atol=1e-3)
    torch.testing.assert_close(proto_gpu.cpu(), proto, rtol=0, atol=1e-4)
