"""The per-worker training loop in plain PyTorch (no Ray here; ``worker.py`` adapts it).

One epoch reads top to bottom: for each micro-batch, set LR/momentum from the schedule (a pure
function of the global micro-batch index ``micro_step``), forward under autocast, loss, backward (without
the DDP all-reduce on micro-batches that do not end an accumulation window), and every
``accumulate`` micro-batches unscale, clip to 10, step, and update the EMA. After the epoch the
caller's ``validate`` runs on the EMA weights and ``on_epoch_end`` observes the result
(checkpoint, report, MLflow); it never changes the loop's state.

Precision: on CUDA autocast in bf16 (or fp16 with a GradScaler); on CPU fp32. Images and the model
are channels_last on both (the worker converts the model).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from cocoseg.engine.ema import ModelEMA
from cocoseg.engine.optim import GROUP_NAMES, Schedule, apply_settings, clip_and_step
from cocoseg.structures import RawOutputs, SegTargets, TrainBatch

__all__ = ["EpochResult", "LoopState", "NonFiniteLossError", "TrainParts", "fit", "resolve_precision",
           "train_epoch", "train_step", "validation_due"]

# loss_fn(outputs, targets) -> {"loss": scalar to back-propagate, "loss_box": ..., ...} where the
# named terms are detached gained components (the contract of cocoseg.loss.SegmentationLoss).
LossFn = Callable[[RawOutputs, SegTargets], dict[str, torch.Tensor]]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message holds every loss term."""


def resolve_precision(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the config's ``train.amp`` on ``device`` (None: full fp32).

    ``auto`` means bf16 on CUDA (no loss scaling needed) and fp32 on CPU, where autocast buys
    little and changes numerics.
    """
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


@dataclass
class TrainParts:
    """The live objects one worker trains with. ``model`` may be DDP-wrapped."""

    model: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ema: ModelEMA
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float = 10.0
    # DDP *averages* gradients over ranks while the recipe's loss (B x terms) is meant to *sum*
    # them over the global batch, so each rank multiplies its loss by the world size (as the
    # reference trainer does): one optimiser step then carries the global batch's gradient.
    loss_scale: float = 1.0


@dataclass
class LoopState:
    """Where training stands; saved in checkpoints. ``epoch`` is the next epoch to run."""

    epoch: int = 0
    micro_step: int = 0  # global micro-batch index: micro-batches trained since the run began ("ni" on disk)
    last_step_at: int = -1  # the micro_step of the last optimiser step ("last_step_ni" on disk)
    best_fitness: float = -1.0
    epoch_rows: int = 0  # rows of epoch ``epoch`` this worker has trained (> 0: resumed inside it)
    epoch_world: int = 0  # the world size ``epoch_rows`` was counted on, when it differs from this one's
    time_spent_s: float = 0.0  # wall seconds counted against train.time_budget_h up to here (rank 0; engine/budget.py)


@dataclass
class EpochResult:
    epoch: int
    metrics: dict[str, float]
    state: LoopState
    preview: object | None = None  # whatever ``validate`` returned besides metrics (e.g. a PNG)
    is_best: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def _checked_total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scalar to back-propagate (``terms["loss"]``: B * sum of gained terms, spec 7.5)."""
    total = terms["loss"]
    if not torch.isfinite(total):
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        raise NonFiniteLossError(f"non-finite loss ({detail}); lower train.lr0 or check the data")
    return total


def train_step(parts: TrainParts, batch: TrainBatch, state: LoopState) -> dict[str, float]:
    """One micro-batch: schedule, forward, loss, backward, and the optimiser step when due."""
    settings = parts.schedule.at(state.micro_step)
    apply_settings(parts.optimizer, settings)
    batch = batch.to(parts.device, non_blocking=True)
    images = batch.images.float().div_(255.0).contiguous(memory_format=torch.channels_last)
    step_due = state.micro_step - state.last_step_at >= settings.accumulate
    # Skip the gradient all-reduce on micro-batches that only accumulate (DDP only).
    sync = contextlib.nullcontext() if step_due or not hasattr(parts.model, "no_sync") else parts.model.no_sync()
    with sync:
        with torch.autocast(parts.device.type, dtype=parts.amp_dtype or torch.float32,
                            enabled=parts.amp_dtype is not None):
            outputs = parts.model(images)
            terms = parts.loss_fn(outputs, batch.targets)
        total = _checked_total(terms) * parts.loss_scale
        scaled = parts.scaler.scale(total) if parts.scaler is not None else total
        scaled.backward()
    out = {k: float(v) for k, v in terms.items() if k != "loss"}
    if step_due:
        params = [p for p in parts.model.parameters() if p.requires_grad]
        out["grad_norm"] = clip_and_step(parts.optimizer, params, parts.scaler, parts.grad_clip)
        parts.ema.update(parts.model)
        state.last_step_at = state.micro_step
    state.micro_step += 1
    return out


def train_epoch(parts: TrainParts, batches: Iterable[TrainBatch], state: LoopState,
                on_step: Callable[[LoopState], None] | None = None) -> dict[str, float]:
    """Train over ``batches``; returns mean loss terms, images/s of this worker and LRs.
    ``on_step(state)`` runs after every micro-batch (heartbeat, preemption poll: ``worker.py``)."""
    parts.model.train()
    sums: dict[str, float] = {}
    images = steps = 0
    start = time.perf_counter()
    for batch in batches:
        terms = train_step(parts, batch, state)
        for k, v in terms.items():
            if k != "grad_norm":
                sums[k] = sums.get(k, 0.0) + v
        images += int(batch.images.shape[0])
        state.epoch_rows += int(batch.images.shape[0])
        steps += 1
        if on_step is not None:
            on_step(state)
    seconds = time.perf_counter() - start
    metrics = {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}
    metrics["train/loss"] = sum(metrics.values())
    metrics["train/images_per_s_worker"] = images / seconds if seconds > 0 else 0.0
    metrics["train/batches"] = float(steps)
    metrics["train/epoch_time_s"] = seconds
    for name, group in zip(GROUP_NAMES, parts.optimizer.param_groups, strict=True):
        metrics[f"lr/{name}"] = float(group["lr"])
    return metrics


def validation_due(epoch: int, epochs: int, val_every: int) -> bool:
    """Whether 0-based ``epoch`` of ``epochs`` is validated: every ``val_every``-th, and the last."""
    return (epoch + 1) % max(val_every, 1) == 0 or epoch + 1 == epochs


def fit(parts: TrainParts, *, epochs: int, state: LoopState,
        train_batches: Callable[[int], Iterable[TrainBatch]],
        validate: Callable[[nn.Module, int], tuple[dict[str, float], object | None]] | None,
        on_epoch_end: Callable[[EpochResult], None], world_size: int = 1,
        fitness_key: str = "val/mask_ap50_95", val_every: int = 1,
        on_step: Callable[[LoopState], None] | None = None,
        should_stop: Callable[[LoopState], bool] | None = None,
        replan: Callable[[LoopState], int] | None = None) -> LoopState:
    """Run epochs ``state.epoch .. epochs-1``, or fewer: ``should_stop(state)``, asked before every
    epoch after the first (a resume included; on every rank: it may be a collective), ends the run
    early (``train.patience``); ``replan(state)``, asked before every epoch (the first included),
    sets ``epochs`` anew (``train.time_budget_h``: the epochs that fit, engine/budget.py).

    ``train_batches(epoch)`` yields this worker's micro-batches of that epoch (the epoch decides
    the augmentation preset); ``validate(ema_module, epoch)`` returns (metrics, preview) or is
    None on ranks that do not validate; it runs every ``val_every`` epochs and after the last.
    Best = highest ``fitness_key`` (mask AP50-95).
    """
    while state.epoch < epochs:
        if replan is not None:
            epochs = replan(state)
            if state.epoch >= epochs:
                break
        if should_stop is not None and state.epoch > 0 and should_stop(state):
            break
        epoch = state.epoch
        metrics = train_epoch(parts, train_batches(epoch), state, on_step)
        metrics["train/images_per_s"] = metrics["train/images_per_s_worker"] * world_size
        preview = None
        val_start = time.perf_counter()
        if validate is not None and validation_due(epoch, epochs, val_every):
            val_metrics, preview = validate(parts.ema.module, epoch)
            metrics.update(val_metrics)
        metrics["val/time_s"] = time.perf_counter() - val_start
        fitness = metrics.get(fitness_key, -math.inf)
        is_best = fitness_key in metrics and fitness > state.best_fitness
        if is_best:
            state.best_fitness = fitness
        state.epoch, state.epoch_rows, state.epoch_world = epoch + 1, 0, 0
        on_epoch_end(EpochResult(epoch=epoch, metrics=metrics, state=state, preview=preview, is_best=is_best))
    return state

