"""The per-worker loop in plain PyTorch (no Ray): accumulation, EMA, validation, best tracking,
non-finite losses, and a real YOLOv8-seg step with the real loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cocoseg.engine.ema import ModelEMA
from cocoseg.engine.loop import EpochResult, LoopState, NonFiniteLossError, TrainParts, fit, resolve_precision
from cocoseg.engine.optim import Schedule, build_optimizer
from cocoseg.structures import RawOutputs, SegTargets, TrainBatch

torch.set_num_threads(2)


class TinyHead(nn.Module):
    """Outputs shaped like RawOutputs so the loop can run a contract-conforming loss over them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return RawOutputs(feats=[y], mask_coeffs=y.flatten(2), proto=y)


def mse_loss(outputs: RawOutputs, targets: SegTargets) -> dict[str, torch.Tensor]:
    term = (outputs.proto.mean(1) - targets.masks.float()).square().mean()
    return {"loss": term * outputs.proto.shape[0], "loss_mask": term.detach()}


def batches(n: int, size: int = 8, b: int = 2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        images = torch.randint(0, 255, (b, 3, size, size), generator=g, dtype=torch.uint8)
        targets = SegTargets(batch_idx=torch.zeros(0, dtype=torch.long), cls=torch.zeros(0, dtype=torch.long),
                             boxes_cxcywh_norm=torch.zeros(0, 4), masks=torch.ones(b, size, size, dtype=torch.int32))
        out.append(TrainBatch(images, targets))
    return out


def parts_for(model, *, nominal=8, global_batch=2, loss_fn=mse_loss, batches_per_epoch=6, epochs=2):
    schedule = Schedule(epochs=epochs, batches_per_epoch=batches_per_epoch, global_batch=global_batch,
                        nominal_batch=nominal, warmup_epochs=0)
    return TrainParts(model=model, loss_fn=loss_fn, optimizer=build_optimizer(model, lr0=0.1, weight_decay=0.0),
                      schedule=schedule, ema=ModelEMA(model, tau=1.0), device=torch.device("cpu"))


def test_optimizer_steps_every_accumulate_micro_batches_and_ema_follows():
    torch.manual_seed(0)
    model = TinyHead()
    parts = parts_for(model)  # accumulate = 8 / 2 = 4
    steps = []
    original_step = parts.optimizer.step

    def counting_step(*a, **k):
        steps.append(1)
        return original_step(*a, **k)

    parts.optimizer.step = counting_step
    seen: list[EpochResult] = []
    state = fit(parts, epochs=2, state=LoopState(), train_batches=lambda e: batches(6),
                validate=lambda m, e: ({"val/mask_ap50_95": 0.1 * (2 - e)}, b"png"), on_epoch_end=seen.append)
    # ni 0..11; a step when ni - last_step >= 4, starting from last_step = -1: ni 3, 7, 11
    assert len(steps) == 3 and parts.ema.updates == 3
    assert state.micro_step == 12 and state.last_step_at == 11 and state.epoch == 2
    assert [r.epoch for r in seen] == [0, 1]
    assert [r.is_best for r in seen] == [True, False] and state.best_fitness == pytest.approx(0.2)
    assert seen[0].preview == b"png"
    m = seen[1].metrics
    assert m["train/batches"] == 6 and m["train/loss"] == pytest.approx(m["train/loss_mask"])
    assert {"lr/bias", "lr/weight", "lr/norm", "train/images_per_s", "val/time_s"} <= set(m)
    ema_w, model_w = parts.ema.module.conv.weight, model.conv.weight
    assert not torch.equal(ema_w, model_w)  # the EMA trails the model
    assert not parts.ema.module.training


def test_validate_sees_the_ema_weights_and_resume_continues_the_epoch_count():
    model = TinyHead()
    parts = parts_for(model, nominal=2)
    received = []
    fit(parts, epochs=2, state=LoopState(epoch=1, micro_step=6, last_step_at=5), train_batches=lambda e: batches(3),
        validate=lambda m, e: (received.append((m, e)) or {}, None), on_epoch_end=lambda r: None)
    assert [e for _, e in received] == [1]
    assert received[0][0] is parts.ema.module


def test_val_every_skips_epochs_but_always_validates_the_last():
    parts = parts_for(TinyHead(), nominal=2)
    seen: list[EpochResult] = []
    fit(parts, epochs=5, state=LoopState(), train_batches=lambda e: batches(1),
        validate=lambda m, e: ({"val/mask_ap50_95": 0.1 * e}, None), on_epoch_end=seen.append, val_every=2)
    assert [("val/mask_ap50_95" in r.metrics) for r in seen] == [False, True, False, True, True]
    assert [r.is_best for r in seen] == [False, True, False, True, True]


def test_non_finite_loss_raises_with_every_term():
    def bad_loss(outputs, targets):
        return {"loss": outputs.proto.sum() * float("nan"), "loss_box": torch.tensor(1.5),
                "loss_mask": torch.tensor(float("nan"))}

    parts = parts_for(TinyHead(), loss_fn=bad_loss)
    with pytest.raises(NonFiniteLossError, match=r"loss_box=1\.5.*loss_mask=nan"):
        fit(parts, epochs=1, state=LoopState(), train_batches=lambda e: batches(1), validate=None,
            on_epoch_end=lambda r: None)


def test_precision_policy():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is None
    assert resolve_precision("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_precision("fp16", torch.device("cuda")) == torch.float16
    assert resolve_precision("off", torch.device("cuda")) is None


def test_real_model_and_loss_step_lowers_the_loss_on_a_fixed_batch():
    from cocoseg.loss import SegmentationLoss
    from cocoseg.model import build_model

    torch.manual_seed(0)
    model = build_model("n", num_classes=2)
    images = torch.full((2, 3, 64, 64), 60, dtype=torch.uint8)
    images[0, :, 8:40, 8:40] = 220
    images[1, 0, 24:56, 16:48] = 250
    masks = torch.zeros(2, 16, 16, dtype=torch.int32)
    masks[0, 2:10, 2:10] = 1
    masks[1, 6:14, 4:12] = 1
    targets = SegTargets(batch_idx=torch.tensor([0, 1]), cls=torch.tensor([0, 1]),
                         boxes_cxcywh_norm=torch.tensor([[0.375, 0.375, 0.5, 0.5], [0.5, 0.625, 0.5, 0.5]]),
                         masks=masks)
    batch = TrainBatch(images, targets)
    schedule = Schedule(epochs=1, batches_per_epoch=8, global_batch=2, nominal_batch=2, warmup_epochs=0, lr0=0.01)
    parts = TrainParts(model=model, loss_fn=SegmentationLoss.from_model(model),
                       optimizer=build_optimizer(model, lr0=0.01, weight_decay=0.0), schedule=schedule,
                       ema=ModelEMA(model), device=torch.device("cpu"))
    criterion = SegmentationLoss.from_model(model)

    def loss_now() -> float:
        model.train()
        with torch.no_grad():
            return float(criterion(model(images.float() / 255), targets)["loss"])

    before = loss_now()
    seen = []
    fit(parts, epochs=1, state=LoopState(), train_batches=lambda e: [batch] * 8, validate=None, on_epoch_end=seen.append)
    after = loss_now()
    assert after < 0.9 * before, (before, after)
    assert parts.ema.updates == 8
    assert all(v == v for v in seen[0].metrics.values())  # no NaN anywhere


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU path is tested above)")
def test_gpu_step_in_bf16_channels_last_and_fp16_with_scaler():
    from cocoseg.loss import SegmentationLoss
    from cocoseg.model import build_model

    device = torch.device("cuda")
    for amp in ("bf16", "fp16"):
        model = build_model("n", num_classes=2).to(device).to(memory_format=torch.channels_last)
        dtype = resolve_precision(amp, device)
        parts = TrainParts(model=model, loss_fn=SegmentationLoss.from_model(model),
                           optimizer=build_optimizer(model, lr0=0.01), ema=ModelEMA(model), device=device,
                           schedule=Schedule(epochs=1, batches_per_epoch=2, global_batch=2, nominal_batch=2, warmup_epochs=0),
                           amp_dtype=dtype, scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None)
        targets = SegTargets(batch_idx=torch.tensor([0, 1]), cls=torch.tensor([0, 1]),
                             boxes_cxcywh_norm=torch.tensor([[0.4, 0.4, 0.3, 0.3], [0.6, 0.6, 0.3, 0.3]]),
                             masks=torch.ones(2, 16, 16, dtype=torch.int32))
        batch = TrainBatch(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), targets)
        state = LoopState()
        fit(parts, epochs=1, state=state, train_batches=lambda e, b=batch: [b, b], validate=None,
            on_epoch_end=lambda r: None)
        assert state.micro_step == 2 and parts.ema.updates == 2
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_rank0_progress_bar_passes_every_batch_through_and_draws_the_epoch(capfd):
    # What rank 0 wraps its batches in when the driver prints to a terminal (the `progress` the
    # trainer hands the workers); piped, the demo test checks that no bar is drawn at all.
    from cocoseg.engine.worker import _with_progress

    batches = _with_progress(lambda epoch: iter(range(epoch, epoch + 3)), total=3, epochs=2)
    assert list(batches(1)) == [1, 2, 3]
    drawn = capfd.readouterr()
    assert "epoch 2/2" in drawn.out + drawn.err and "3.00/3.00" in drawn.out + drawn.err
