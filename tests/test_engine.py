"""Optimiser groups, the schedule, EMA and checkpoints (plain PyTorch, no Ray)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from cocoseg.engine import checkpoint as ckpt
from cocoseg.engine.ema import ModelEMA
from cocoseg.engine.optim import (
    Schedule,
    accumulate_steps,
    apply_settings,
    build_optimizer,
    clip_and_step,
    lr_factor,
    param_groups,
    scaled_weight_decay,
)

torch.set_num_threads(1)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.SiLU(),
                         nn.Conv2d(4, 2, 1, bias=True), nn.GroupNorm(1, 2))


def test_three_groups_partition_every_parameter():
    net = tiny_net()
    groups = param_groups(net, weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["bias", "weight", "norm"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    assert by_name["weight"] == {id(net[0].weight), id(net[3].weight)}
    assert by_name["norm"] == {id(net[1].weight), id(net[4].weight)}
    assert by_name["bias"] == {id(net[1].bias), id(net[3].bias), id(net[4].bias)}
    assert [g["weight_decay"] for g in groups] == [0.0, 5e-4, 0.0]


def test_decay_applies_only_to_the_weight_group():
    net = tiny_net()
    opt = build_optimizer(net, name="SGD", lr0=0.1, momentum=0.0, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # zero loss gradient: only decay can move a weight
    opt.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"0.weight", "3.weight"}


def test_accumulation_and_decay_scale_to_the_nominal_batch():
    assert accumulate_steps(64, 16) == 4
    assert accumulate_steps(64, 128) == 1
    assert scaled_weight_decay(5e-4, 64, 16) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 64, 24) == pytest.approx(5e-4 * 24 * 3 / 64)


def test_lr_factor_linear_and_cosine_endpoints():
    assert lr_factor(0, 10, 0.01, False) == 1.0
    assert lr_factor(10, 10, 0.01, False) == pytest.approx(0.01)
    assert lr_factor(5, 10, 0.01, False) == pytest.approx(0.505)
    assert lr_factor(0, 10, 0.01, True) == pytest.approx(1.0)
    assert lr_factor(10, 10, 0.01, True) == pytest.approx(0.01)
    assert lr_factor(5, 10, 0.01, True) == pytest.approx(0.505)
    assert lr_factor(2, 10, 0.01, True) > lr_factor(2, 10, 0.01, False)


def test_warmup_ramps_lr_bias_lr_momentum_and_accumulation():
    s = Schedule(epochs=10, batches_per_epoch=50, global_batch=16, warmup_epochs=3.0)
    assert s.warmup_steps == 150
    first = s.at(0)
    assert first.lrs == (pytest.approx(0.1), 0.0, 0.0)
    assert first.momentum == pytest.approx(0.8)
    assert first.accumulate == 1
    mid = s.at(75)  # half-way through warmup, epoch 1
    base = 0.01 * lr_factor(1, 10, 0.01, False)
    assert mid.lrs[1] == pytest.approx(base / 2)
    assert mid.lrs[0] == pytest.approx((0.1 + base) / 2)
    assert mid.momentum == pytest.approx((0.8 + 0.937) / 2)
    assert mid.accumulate == round(1 + (4 - 1) / 2)
    after = s.at(151)
    base3 = 0.01 * lr_factor(3, 10, 0.01, False)
    assert after.lrs == (pytest.approx(base3),) * 3
    assert after.momentum == pytest.approx(0.937)
    assert after.accumulate == 4
    # pure function of the step: same answer twice, falls monotonically after warmup
    assert s.at(151) == after
    lrs = [s.at(micro_step).lrs[1] for micro_step in range(151, 500, 50)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_minimum_warmup_floor_and_no_warmup():
    assert Schedule(epochs=3, batches_per_epoch=4, global_batch=8).warmup_steps == 100
    assert Schedule(epochs=3, batches_per_epoch=4, global_batch=8, min_warmup_steps=0).warmup_steps == 12
    s = Schedule(epochs=3, batches_per_epoch=4, global_batch=8, warmup_epochs=0)
    assert s.at(0).lrs == (0.01, 0.01, 0.01)


def test_apply_settings_and_clipping():
    net = tiny_net()
    opt = build_optimizer(net, name="SGD", lr0=0.01, momentum=0.9, weight_decay=0.0)
    s = Schedule(epochs=2, batches_per_epoch=10, global_batch=8)
    apply_settings(opt, s.at(0))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1), 0.0, 0.0]
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)
    for p in net.parameters():
        p.grad = torch.full_like(p, 100.0)
    params = list(net.parameters())
    total = math.sqrt(sum(p.numel() for p in params)) * 100.0
    apply_settings(opt, s.at(10_000))
    norm = clip_and_step(opt, params, scaler=None, max_norm=10.0)
    assert norm == pytest.approx(total, rel=1e-5)
    assert all(p.grad is None for p in params)


def test_ema_ramp_and_update():
    net = tiny_net()
    ema = ModelEMA(net, decay=0.9999, tau=2000)
    assert ema.decay_at(1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert ema.decay_at(100_000) == pytest.approx(0.9999, abs=1e-8)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.add_(2.0)
        net[1].num_batches_tracked.add_(7)
    d = ema.update(net)
    assert torch.allclose(ema.module[0].weight, d * start + (1 - d) * net[0].weight)
    assert torch.allclose(ema.module[1].running_mean, torch.full((4,), (1 - d) * 2.0))
    assert int(ema.module[1].num_batches_tracked) == 0  # integer counters are not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def seg_model() -> nn.Module:
    from cocoseg.model import build_model

    torch.manual_seed(0)
    return build_model("n", num_classes=2)


def card():
    from cocoseg.model.weights import ModelCard

    return ModelCard(variant="n", num_classes=2, class_names=["a", "b"], imgsz=64)


def _train_a_bit(net, opt, ema, steps=2):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 64, 64, generator=g)
    net.train()
    for _ in range(steps):
        out = net(x)
        (out.proto.square().mean() + sum(f.square().mean() for f in out.feats)).backward()
        clip_and_step(opt, list(net.parameters()), None)
        ema.update(net)


def _save(folder, net, opt, ema, **kw):
    args = dict(epoch=0, micro_step=3, best_fitness=0.0, config={}, card=card())
    args.update(kw)
    return ckpt.save_checkpoint(folder, model=net, ema=ema, optimizer=opt, scaler=None, **args)


def test_checkpoint_round_trip_resumes_bit_exactly(tmp_path):
    net = seg_model()
    opt = build_optimizer(net, lr0=0.01, momentum=0.9, weight_decay=1e-4)
    ema = ModelEMA(net)
    _train_a_bit(net, opt, ema)
    random.seed(3)
    np.random.seed(3)
    folder = _save(tmp_path / "c", net, opt, ema, epoch=2, micro_step=30, best_fitness=0.25,
                   config={"train": {"epochs": 4}}, mlflow_run_id="abc", last_step_at=28)
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    _train_a_bit(net, opt, ema, steps=1)
    reference = [p.detach().clone() for p in net.parameters()]

    net2 = seg_model()
    opt2 = build_optimizer(net2, lr0=0.01, momentum=0.9, weight_decay=1e-4)
    ema2 = ModelEMA(net2)
    state = ckpt.load_train_state(folder)
    assert (state["epoch"], state["ni"], state["last_step_ni"], state["best_fitness"], state["mlflow_run_id"]) == \
        (2, 30, 28, 0.25, "abc")
    ckpt.restore_training(state, model=net2, ema=ema2, optimizer=opt2, scaler=None)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws
    assert ema2.updates == 2
    _train_a_bit(net2, opt2, ema2, steps=1)
    for a, b in zip(reference, net2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_weights_are_the_ema_and_publish_to_s3(tmp_path, s3_bucket):
    from cocoseg import storage
    from cocoseg.model.weights import load_checkpoint

    net = seg_model()
    opt = build_optimizer(net)
    ema = ModelEMA(net)
    _train_a_bit(net, opt, ema)
    folder = _save(tmp_path / "c", net, opt, ema)
    uri = ckpt.publish(folder, f"{s3_bucket}/runs/r1/weights/best")
    names = sorted(e.uri.rsplit("/", 1)[1] for e in storage.list_files(uri))
    assert names == sorted([ckpt.WEIGHTS_FILE, ckpt.CARD_FILE, ckpt.CONFIG_FILE, ckpt.MARKER_FILE])
    loaded, loaded_card = load_checkpoint(uri, num_classes=2, variant="n")
    assert loaded_card.class_names == ["a", "b"]
    for k, v in ema.module.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not torch.equal(loaded.state_dict()["model.0.conv.weight"], net.state_dict()["model.0.conv.weight"])


def test_incomplete_or_foreign_checkpoint_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.json is missing"):
        ckpt.load_train_state(tmp_path / "half")
    net = seg_model()
    folder = _save(tmp_path / "c", net, build_optimizer(net), ModelEMA(net))
    other = tiny_net()
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.restore_training(ckpt.load_train_state(folder), model=other, ema=ModelEMA(other),
                              optimizer=build_optimizer(other), scaler=None)


def test_initial_weights_from_a_cocoseg_checkpoint_or_a_pt_file(tmp_path):
    """``model.weights`` names a cocoseg checkpoint folder or a ``.pt``: here a plain yolov8n-seg
    (80 classes) state dict in the reference's key layout, written by the test (the reference
    implementation's own .pt is imported by the reference checkpoint tests in test_model_weights)."""
    from cocoseg.config import ModelConfig
    from cocoseg.engine.build import build_model
    from cocoseg.model import build_model as build_network
    from cocoseg.model.weights import CheckpointError

    net = seg_model()
    folder = _save(tmp_path / "c", net, build_optimizer(net), ModelEMA(net))
    warm = build_model(ModelConfig(variant="n", num_classes=2, weights=str(folder)))
    assert warm.training
    for k, v in net.state_dict().items():  # the EMA of an untrained model equals the model
        assert torch.equal(warm.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="expected 3"):
        build_model(ModelConfig(variant="n", num_classes=3, weights=str(folder)))
    pt = tmp_path / "yolov8n-seg.pt"
    torch.manual_seed(1)
    saved = build_network("n", 80).state_dict()
    torch.save(saved, pt)
    imported = build_model(ModelConfig(variant="n", num_classes=80, weights=str(pt)))
    assert imported.state_dict()["model.0.conv.weight"].shape == (16, 3, 3, 3)
    assert torch.equal(imported.state_dict()["model.0.conv.weight"], saved["model.0.conv.weight"])
    with pytest.raises(CheckpointError, match="config asks for s/80"):
        build_model(ModelConfig(variant="s", num_classes=80, weights=str(pt)))
