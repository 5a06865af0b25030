"""Exponential moving average of the model weights (spec 9.4).

After every optimiser step: ``updates += 1``, ``d = decay * (1 - exp(-updates / tau))`` and, for
every floating-point entry of the state dict (parameters and norm running statistics, not the
integer ``num_batches_tracked`` counters), ``ema = d * ema + (1 - d) * model``. The ramp makes
the EMA follow the model closely early on (d ~ 0 at the first step) and average over ~1/(1-d)
steps later. Validation and saved weights use the EMA.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP (``.module``) or the model itself."""
    return getattr(model, "module", model)


class ModelEMA:
    """An eval-mode copy of a model whose weights trail the trained ones.

    ``decay`` is the asymptotic decay (0.9999), ``tau`` the ramp length in optimiser steps (2000).
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates

    def decay_at(self, updates: int) -> float:
        """The EMA weight of the old value after ``updates`` optimiser steps."""
        return self.decay * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the current weights of ``model`` into the average; returns the decay used."""
        self.updates += 1
        d = self.decay_at(self.updates)
        current = unwrap(model).state_dict()
        for name, ema_value in self.module.state_dict().items():
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(current[name].detach().to(ema_value.dtype), alpha=1 - d)
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates,
                "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))
        self.tau = float(state.get("tau", self.tau))
