"""Early stopping on the validated fitness (``train.patience``), taken at an epoch boundary.

The decision is a pure function of the validated fitness per epoch (:func:`patience_stop`), so
it reads the same whether the metrics came in-process (``validation.mode=blocking``) or from the
asynchronous validations' collector (``engine/validation.py``), where they arrive later than the
epoch that produced them. Rank 0 decides; ``worker.py`` broadcasts the decision to every rank at
the next epoch boundary so all ranks leave the epoch loop together under DDP.

As in the reference trainer, the run stops once the newest validated epoch is ``patience`` or more
epochs after the best one (the earliest epoch with the highest fitness).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cocoseg.engine.loop import LoopState
from cocoseg.utils import get_logger

__all__ = ["STOP_FILE", "Stop", "patience_stop", "should_stop_fn"]

log = get_logger(__name__)
STOP_FILE = "early_stop.json"  # under <run>/tracking/: the stop's epoch, best epoch and fitness


@dataclass(frozen=True)
class Stop:
    """Why a run stops early: at ``epoch`` (the newest validated epoch, the decision epoch) the
    best validated ``fitness`` (val mask AP50-95) was reached at ``best_epoch``."""

    epoch: int
    best_epoch: int
    fitness: float
    patience: int

    def line(self) -> str:
        return (f"early stop: val/mask_ap50_95 has not improved for {self.epoch - self.best_epoch} epochs "
                f"(train.patience={self.patience}) at epoch {self.epoch + 1}; best epoch {self.best_epoch + 1}, "
                f"fitness {self.fitness:.4f} (weights/best)")

    def as_dict(self) -> dict[str, float | int]:
        return {"epoch": self.epoch, "best_epoch": self.best_epoch, "fitness": self.fitness, "patience": self.patience}


def patience_stop(fitness: Mapping[int, float], patience: int) -> Stop | None:
    """``fitness``: {0-based epoch: validated fitness} of the epochs validated so far (any order).
    -> a :class:`Stop` when the newest one is >= ``patience`` epochs after the best, else None
    (``patience`` 0: never)."""
    if patience <= 0 or not fitness:
        return None
    best_epoch, best = max(fitness.items(), key=lambda kv: (kv[1], -kv[0]))
    newest = max(fitness)
    if newest - best_epoch >= patience:
        return Stop(epoch=newest, best_epoch=best_epoch, fitness=float(best), patience=patience)
    return None


def should_stop_fn(patience: int, epochs: int, *, rank: int, arrived: Callable[[], Mapping[int, float]],
                   on_stop: Callable[[Stop, int], None],
                   broadcast: Callable[[str], str] | None = None) -> Callable[[LoopState], bool] | None:
    """``fit``'s ``should_stop`` (None when ``patience`` cannot trigger within ``epochs``). Rank 0
    decides on ``arrived()`` (the validated fitness per epoch known now), logs the one line, calls
    ``on_stop(stop, last trained epoch)``; ``broadcast`` (Ray Train's broadcast from rank 0, with
    several ranks) hands the decision to every rank, so all leave the epoch loop at this boundary."""
    if not 0 < patience < epochs:  # the same on every rank: all call the collective or none does
        return None

    def should_stop(state: LoopState) -> bool:
        decision = ""
        if rank == 0:
            stop = patience_stop(arrived(), patience)
            if stop is not None:
                decision = stop.line()
                log.warning("%s; epochs trained after it while its validation ran: %d (kept, validated, logged)",
                            decision, state.epoch - 1 - stop.epoch)
                on_stop(stop, state.epoch - 1)
        if broadcast is not None:
            decision = broadcast(decision)
        return bool(decision)

    return should_stop
