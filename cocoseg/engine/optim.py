"""Optimiser, parameter groups and the LR / momentum / accumulation schedule (spec 9.2-9.3).

Everything the schedule decides is a pure function of the global ``micro_step`` (micro-batches
seen since the start of training) and the number of micro-batches per epoch: resuming from a
checkpoint only needs ``micro_step``, and the tests can tabulate the schedule without a model.

"Batch" below is the *global* micro-batch: the per-worker batch times the world size, because
DDP averages gradients over workers, so one step of N workers with b images each sees N*b
images (the YOLOv8 recipe's ``batch`` is that global figure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "AUTO_MAX_ITERATIONS",
    "GROUP_NAMES",
    "OptimizerChoice",
    "Schedule",
    "StepSettings",
    "accumulate_steps",
    "apply_settings",
    "build_optimizer",
    "clip_and_step",
    "lr_factor",
    "param_groups",
    "resolve_optimizer",
    "scaled_weight_decay",
]

# Group order matters: the warmup treats group 0 ("bias") specially (spec 9.3).
GROUP_NAMES = ("bias", "weight", "norm")

_NORM_TYPES = tuple(t for name, t in vars(nn).items() if isinstance(t, type) and "Norm" in name)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into the three YOLOv8 groups.

    - ``bias``: every parameter named ``*bias`` (conv biases and norm betas), no decay;
    - ``weight``: other weights of non-normalisation modules (convs, linears), ``weight_decay``;
    - ``norm``: weights (gamma) of normalisation layers, no decay.

    Each parameter lands in exactly one group; a group may be empty (still returned, so group
    indices are stable).
    """
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if pname == "bias" or pname.endswith("bias"):
                groups["bias"].append(param)
            elif isinstance(module, _NORM_TYPES):
                groups["norm"].append(param)
            else:
                groups["weight"].append(param)
    return [
        {"name": "bias", "params": groups["bias"], "weight_decay": 0.0},
        {"name": "weight", "params": groups["weight"], "weight_decay": weight_decay},
        {"name": "norm", "params": groups["norm"], "weight_decay": 0.0},
    ]


def accumulate_steps(nominal_batch: int, global_batch: int) -> int:
    """Micro-batches per optimiser step after warmup: round(nbs / batch), at least 1."""
    return max(round(nominal_batch / global_batch), 1)


def scaled_weight_decay(weight_decay: float, nominal_batch: int, global_batch: int) -> float:
    """Decay per optimiser step scaled so it matches the nominal batch (spec 9.2)."""
    return weight_decay * global_batch * accumulate_steps(nominal_batch, global_batch) / nominal_batch


# optimizer=auto (spec 9.2): runs of at most this many optimiser iterations get AdamW.
AUTO_MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class OptimizerChoice:
    """The optimiser a run uses and the recipe values that go with it (``reason``: why, one line)."""

    name: str
    lr0: float
    momentum: float
    warmup_bias_lr: float
    reason: str

    def describe(self, requested: str) -> str:
        """``optimizer auto -> AdamW(lr=0.00125, momentum=0.9): 720 iterations <= 10000``."""
        return f"optimizer {requested} -> {self.name}(lr={self.lr0:g}, momentum={self.momentum:g}): {self.reason}"


def resolve_optimizer(name: str, *, lr0: float, momentum: float, warmup_bias_lr: float, train_images: int,
                      global_batch: int, nominal_batch: int, epochs: int, num_classes: int) -> OptimizerChoice:
    """Resolve ``train.optimizer`` (``auto``, ``SGD``, ``Adam``, ``AdamW``) to what the run uses.

    An explicit name keeps the configured ``lr0`` / ``momentum`` / ``warmup_bias_lr``. ``auto``
    ignores them and counts optimiser iterations as ``ceil(train_images / max(global_batch,
    nominal_batch)) * epochs``: up to :data:`AUTO_MAX_ITERATIONS` it takes AdamW with
    ``lr0 = round(0.002 * 5 / (4 + num_classes), 6)`` (a short run needs Adam's per-parameter
    step sizes; 0.000119 for 80 classes), beyond that SGD lr0 0.01; momentum 0.9 and no bias
    warm-up LR in both cases (the bias group's 0.1 warm-up start would swamp an Adam step).
    """
    if name != "auto":
        return OptimizerChoice(name, lr0, momentum, warmup_bias_lr, "set in the config")
    iterations = math.ceil(train_images / max(global_batch, nominal_batch)) * epochs
    count = (f"{iterations} iterations (ceil({train_images} images / max(batch {global_batch}, "
             f"nominal {nominal_batch})) x {epochs} epochs)")
    if iterations > AUTO_MAX_ITERATIONS:
        return OptimizerChoice("SGD", 0.01, 0.9, 0.0, f"{count} > {AUTO_MAX_ITERATIONS}")
    return OptimizerChoice("AdamW", round(0.002 * 5 / (4 + num_classes), 6), 0.9, 0.0,
                           f"{count} <= {AUTO_MAX_ITERATIONS}, {num_classes} classes")


def build_optimizer(model: nn.Module, *, name: str = "SGD", lr0: float = 0.01, momentum: float = 0.937,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam/AdamW (betas (momentum, 0.999)) over :func:`param_groups`.

    ``weight_decay`` is the value actually applied to the ``weight`` group (pass the output of
    :func:`scaled_weight_decay`). Every group records ``initial_lr`` for the schedule.
    """
    groups = param_groups(model, weight_decay)
    for g in groups:
        g["initial_lr"] = lr0
    if name == "SGD":
        return torch.optim.SGD(groups, lr=lr0, momentum=momentum, nesterov=momentum > 0)
    if name in ("Adam", "AdamW"):
        cls = torch.optim.AdamW if name == "AdamW" else torch.optim.Adam
        return cls(groups, lr=lr0, betas=(momentum, 0.999))
    raise ValueError(f"unknown optimizer {name!r}: use SGD, Adam or AdamW (resolve 'auto' with resolve_optimizer)")


def lr_factor(epoch: float, epochs: int, lrf: float, cos_lr: bool) -> float:
    """LR multiplier for ``epoch`` (0-based) of ``epochs``: 1 at epoch 0, falling to ``lrf``.

    Linear: (1 - e/E)(1 - lrf) + lrf. Cosine: ((1 - cos(pi e/E)) / 2)(lrf - 1) + 1.
    """
    if cos_lr:
        return ((1 - math.cos(math.pi * epoch / epochs)) / 2) * (lrf - 1) + 1
    return (1 - epoch / epochs) * (1.0 - lrf) + lrf


def _interp(x: float, x1: float, y0: float, y1: float) -> float:
    """Linear interpolation from (0, y0) to (x1, y1), clamped at both ends (like np.interp)."""
    if x1 <= 0 or x >= x1:
        return y1
    return y0 + (y1 - y0) * max(x, 0.0) / x1


@dataclass(frozen=True)
class StepSettings:
    """What the optimiser uses at one micro-batch: per-group LRs (GROUP_NAMES order)."""

    lrs: tuple[float, float, float]
    momentum: float
    accumulate: int


@dataclass(frozen=True)
class Schedule:
    """The YOLOv8 schedule as a pure function of the global micro-batch index ``micro_step``.

    ``batches_per_epoch`` is the number of micro-batches one worker sees per epoch (all workers
    see the same number: Ray's split is ``equal=True``).
    """

    epochs: int
    batches_per_epoch: int
    global_batch: int
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    nominal_batch: int = 64
    cos_lr: bool = False
    min_warmup_steps: int = 100  # the classic recipe's floor; 0 gives the 8.4 behaviour

    @property
    def warmup_steps(self) -> int:
        """nw = max(round(warmup_epochs * nb), min_warmup_steps); 0 when warmup_epochs is 0."""
        if self.warmup_epochs <= 0:
            return 0
        return max(round(self.warmup_epochs * self.batches_per_epoch), self.min_warmup_steps)

    def at(self, micro_step: int) -> StepSettings:
        """Settings for global micro-batch ``micro_step`` (0-based)."""
        epoch = micro_step // max(self.batches_per_epoch, 1)
        base = self.lr0 * lr_factor(epoch, self.epochs, self.lrf, self.cos_lr)
        accumulate = accumulate_steps(self.nominal_batch, self.global_batch)
        nw = self.warmup_steps
        if micro_step > nw or nw == 0:
            return StepSettings((base, base, base), self.momentum, accumulate)
        bias_lr = _interp(micro_step, nw, self.warmup_bias_lr, base)
        lr = _interp(micro_step, nw, 0.0, base)
        momentum = _interp(micro_step, nw, self.warmup_momentum, self.momentum)
        warm_acc = max(1, round(_interp(micro_step, nw, 1.0, self.nominal_batch / self.global_batch)))
        return StepSettings((bias_lr, lr, lr), momentum, warm_acc)


def apply_settings(optimizer: torch.optim.Optimizer, settings: StepSettings) -> None:
    """Write LRs and momentum (SGD momentum or Adam beta1) into the optimiser's groups."""
    for group, lr in zip(optimizer.param_groups, settings.lrs, strict=True):
        group["lr"] = lr
        if "momentum" in group:
            group["momentum"] = settings.momentum
        elif "betas" in group:
            group["betas"] = (settings.momentum, group["betas"][1])


def clip_and_step(optimizer: torch.optim.Optimizer, parameters: list[torch.Tensor],
                  scaler: torch.amp.GradScaler | None, max_norm: float = 10.0) -> float:
    """Unscale (AMP), clip the total gradient norm to ``max_norm``, step, zero the gradients.

    Returns the total gradient norm before clipping (inf/nan when the scaler skips the step).
    """
    if scaler is not None and scaler.is_enabled():
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm=max_norm)
    if scaler is not None and scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
