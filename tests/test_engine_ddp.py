"""The train step under real DDP (two gloo processes on CPU): with ``loss_scale = world size`` one
optimiser step carries the gradient of the *global* batch, as the recipe's B x loss intends, so
two ranks with half a batch each land on the same weights as one process with the whole batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cocoseg.engine.ema import ModelEMA
from cocoseg.engine.loop import LoopState, TrainParts, train_step
from cocoseg.engine.optim import Schedule, build_optimizer
from cocoseg.structures import RawOutputs, SegTargets, TrainBatch

BATCH = 4


class Net(nn.Module):
    """No BatchNorm: per-rank batch statistics would make the two runs differ for another reason."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return RawOutputs(feats=[y], mask_coeffs=y.flatten(2), proto=y)


def loss_fn(outputs: RawOutputs, targets: SegTargets) -> dict[str, torch.Tensor]:
    # B x (mean over the images of this batch), the shape of the recipe's loss (spec 7.5)
    term = (outputs.proto.mean(1) - targets.masks.float()).square().mean()
    return {"loss": term * outputs.proto.shape[0], "loss_mask": term.detach()}


def global_batch() -> TrainBatch:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 255, (BATCH, 3, 8, 8), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 2, (BATCH, 8, 8), generator=g, dtype=torch.int32)
    targets = SegTargets(batch_idx=torch.zeros(0, dtype=torch.long), cls=torch.zeros(0, dtype=torch.long),
                         boxes_cxcywh_norm=torch.zeros(0, 4), masks=masks)
    return TrainBatch(images, targets)


def one_step(model: nn.Module, batch: TrainBatch, *, loss_scale: float) -> None:
    # nominal batch = global batch: every micro-batch is an optimiser step
    schedule = Schedule(epochs=1, batches_per_epoch=1, global_batch=BATCH, nominal_batch=BATCH, warmup_epochs=0)
    bare = getattr(model, "module", model)
    parts = TrainParts(model=model, loss_fn=loss_fn, optimizer=build_optimizer(model, lr0=0.1, weight_decay=0.0),
                       schedule=schedule, ema=ModelEMA(bare, tau=1.0), device=torch.device("cpu"),
                       loss_scale=loss_scale)
    train_step(parts, batch, LoopState())


def _rank(rank: int, world: int, rendezvous: str, scale_by_world: bool, out: str) -> None:
    torch.set_num_threads(1)
    # a file rendezvous: no port to pick and lose to another process between pick and bind
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(Net())
        full = global_batch()
        half = BATCH // world
        images = full.images[rank * half:(rank + 1) * half]
        masks = full.targets.masks[rank * half:(rank + 1) * half]
        batch = TrainBatch(images, SegTargets(full.targets.batch_idx, full.targets.cls,
                                              full.targets.boxes_cxcywh_norm, masks))
        one_step(model, batch, loss_scale=float(world) if scale_by_world else 1.0)
        if rank == 0:
            torch.save(model.module.state_dict(), out)
        # Both ranks leave together: a rank that tore gloo down while its peer was still in the
        # step's all-reduce died now and then with "terminate called without an active exception".
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_weights(tmp_path, scale_by_world: bool) -> dict[str, torch.Tensor]:
    out = str(tmp_path / f"ddp-{scale_by_world}.pt")
    rendezvous = str(tmp_path / f"rendezvous-{scale_by_world}")
    mp.spawn(_rank, args=(2, rendezvous, scale_by_world, out), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


def test_two_ranks_with_world_size_scaling_equal_one_process_on_the_global_batch(tmp_path):
    torch.manual_seed(0)
    single = Net()
    one_step(single, global_batch(), loss_scale=1.0)
    expected = single.state_dict()

    scaled = _ddp_weights(tmp_path, scale_by_world=True)
    for name, value in expected.items():
        torch.testing.assert_close(scaled[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")

    # Without the scaling DDP's average halves the gradient: the weights must differ.
    unscaled = _ddp_weights(tmp_path, scale_by_world=False)
    assert not torch.allclose(unscaled["conv.weight"], expected["conv.weight"], rtol=1e-5, atol=1e-6)
