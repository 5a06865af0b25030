"""The wall-clock budget of a training run (``train.time_budget_h``; 0 or null: off).

Re-decided at every epoch boundary, as the reference trainer's ``time`` argument does: once an
epoch has been timed, the run plans ``epochs = done + floor((budget - spent - reserve) / epoch_s)``
(at most ``train.epochs``: the budget only shortens a run), and the LR decay, the close-mosaic
window and the warm-up are derived again from that number (:func:`replan_schedule`,
``preset_for_epoch``). ``epoch_s`` is the mean wall time of the epochs timed so far (all attempts
of the run); ``reserve`` keeps room for the run's end (:func:`end_reserve_s`): the last
validation and, asynchronous, those queued before it. An epoch is never cut: when not one more
epoch fits, the run ends at this boundary through the same exit as ``train.patience``.

What it counts (docs/reliability.md, "Wall-clock budget"): rank 0's wall time from the start of
each attempt's epoch loop (after the model is built and the checkpoint loaded) to the end of its
last epoch: training, in-process validation, checkpoint saves, the report barrier and, at the
run's end, the wait for the last asynchronous validations. Not counted: the job's start before
the first epoch (Ray, checks, MLflow, worker start) and the gap between a failed attempt and its
restart. The time spent is kept in every checkpoint (``LoopState.time_spent_s``) and in
``<run>/tracking/time_budget.json`` (every plan, the epochs timed); a resume takes the larger of
the two and plans with what is left.

The clock is a seam (``clock``, default :func:`time.monotonic`): :class:`TimeBudget` reads it once
when an attempt's epoch loop starts, once at every epoch end and once when the run ends, so a test
can hand the train job a clock whose epochs take a known time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cocoseg.engine.loop import LoopState
from cocoseg.engine.optim import Schedule
from cocoseg.utils import get_logger

__all__ = ["BUDGET_FILE", "Plan", "TimeBudget", "end_reserve_s", "planned_epochs", "replan_fn", "replan_schedule"]

log = get_logger(__name__)

BUDGET_FILE = "time_budget.json"  # under <run>/tracking/


def planned_epochs(*, budget_s: float, spent_s: float, done: int, epoch_s: float, reserve_s: float,
                   max_epochs: int) -> int:
    """Epochs the run trains in all (seconds throughout): ``done`` (epochs trained) plus the whole
    epochs of ``epoch_s`` that fit in what is left of ``budget_s`` after ``spent_s`` and
    ``reserve_s``; at most ``max_epochs``, at least ``done`` (nothing more fits: stop now).
    ``epoch_s`` <= 0 (nothing timed yet): ``max_epochs``."""
    if epoch_s <= 0:
        return max_epochs
    left = budget_s - spent_s - reserve_s
    more = math.floor(left / epoch_s) if left > 0 else 0
    return max(done, min(max_epochs, done + more))


def end_reserve_s(validation_s: Sequence[float], *, backlog: int = 0, concurrency: int = 1) -> float:
    """Seconds kept after the last epoch for the run's end: the longest validation measured
    (``validation_s``) for the last epoch's validation and the ``backlog`` still queued or running
    before it, ``concurrency`` at a time. 0 before any was measured (an asynchronous one is
    measured when it arrives, usually within an epoch or two; each boundary plans again)."""
    return max(validation_s, default=0.0) * math.ceil((backlog + 1) / max(concurrency, 1))


def replan_schedule(schedule: Schedule, epochs: int) -> Schedule:
    """``schedule`` over ``epochs`` in all: the LR decays to ``lrf`` at the new end, and the warm-up
    leaves at least the final epoch at the regular schedule (the reference's rule for its
    ``time`` mode): at most ``epochs - 1`` epochs of it, the step floor included."""
    room = max(epochs - 1, 0)
    return dataclasses.replace(schedule, epochs=epochs, warmup_epochs=min(schedule.warmup_epochs, room),
                               min_warmup_steps=min(schedule.min_warmup_steps, room * schedule.batches_per_epoch))


@dataclass(frozen=True)
class Plan:
    """One decision, taken before epoch ``before_epoch`` (0-based): ``epochs`` in all, from
    ``spent_s`` of ``budget_s`` (the budget then: a resume may raise it), a mean epoch of
    ``epoch_s`` and ``reserve_s`` kept for the end."""

    before_epoch: int
    epochs: int
    spent_s: float
    epoch_s: float
    reserve_s: float
    budget_s: float = 0.0


@dataclass
class TimeBudget:
    """Rank 0's clock of the budget over one attempt (see the module doc).

    ``spent_s``/``timed_epochs``/``timed_s``: what earlier attempts left (:meth:`resumed`)."""

    budget_s: float
    max_epochs: int
    spent_s: float = 0.0
    timed_epochs: int = 0
    timed_s: float = 0.0
    plans: list[Plan] = field(default_factory=list)
    presets: dict[str, str] = field(default_factory=dict)  # {epoch: the augmentation preset it trained with}
    validation_s: list[float] = field(default_factory=list)  # in-process validations' seconds (blocking)
    clock: Callable[[], float] = time.monotonic
    _last: float | None = None  # the clock at the attempt's start or its last epoch end

    @classmethod
    def resumed(cls, budget_h: float, max_epochs: int, journal: dict[str, Any] | None, checkpoint_spent_s: float,
                clock: Callable[[], float] = time.monotonic) -> TimeBudget:
        """The budget of a run (re)starting: the time spent is the larger of the journal's and the
        checkpoint's (the journal also holds epochs trained after the checkpoint, then lost)."""
        journal = journal or {}
        return cls(budget_s=budget_h * 3600.0, max_epochs=max_epochs,
                   spent_s=max(float(journal.get("spent_s", 0.0)), float(checkpoint_spent_s)),
                   timed_epochs=int(journal.get("timed_epochs", 0)), timed_s=float(journal.get("timed_s", 0.0)),
                   plans=[Plan(**p) for p in journal.get("plans", [])], presets=dict(journal.get("presets", {})),
                   validation_s=list(journal.get("validation_s", [])), clock=clock)

    @property
    def epoch_s(self) -> float:
        return self.timed_s / self.timed_epochs if self.timed_epochs else 0.0

    def _advance(self) -> float:
        now = self.clock()
        if self._last is not None:
            self.spent_s += now - self._last
        self._last = now
        return self.spent_s

    def start(self) -> None:
        """The attempt's epoch loop starts (the clock's first reading)."""
        self._advance()

    def epoch_ended(self, epoch: int, *, preset: str = "", validation_s: float | None = None,
                    timed: bool = True) -> float:
        """Epoch ``epoch`` ended (trained with ``preset``; validated in-process in ``validation_s``):
        times it unless ``timed`` is False (an epoch resumed from its middle is not a whole one);
        -> seconds spent so far."""
        before = self.spent_s
        self._advance()
        if timed:
            self.timed_epochs += 1
            self.timed_s += self.spent_s - before
        if preset:
            self.presets[str(epoch)] = preset
        if validation_s is not None:
            self.validation_s.append(float(validation_s))
        return self.spent_s

    def plan(self, done: int, reserve_s: float) -> Plan:
        """The plan before epoch ``done`` (``done`` epochs trained), from the times so far."""
        epochs = planned_epochs(budget_s=self.budget_s, spent_s=self.spent_s, done=done, epoch_s=self.epoch_s,
                                reserve_s=reserve_s, max_epochs=self.max_epochs)
        plan = Plan(before_epoch=done, epochs=epochs, spent_s=self.spent_s, epoch_s=self.epoch_s, reserve_s=reserve_s,
                    budget_s=self.budget_s)
        self.plans.append(plan)
        return plan

    def finish(self) -> float:
        """The run's end (after the last validations): -> seconds spent."""
        return self._advance()

    def journal(self) -> dict[str, Any]:
        """What ``tracking/time_budget.json`` holds (and :meth:`resumed` reads)."""
        return {"budget_s": self.budget_s, "spent_s": self.spent_s, "timed_epochs": self.timed_epochs,
                "timed_s": self.timed_s, "plans": [asdict(p) for p in self.plans], "presets": self.presets,
                "validation_s": self.validation_s}


def replan_fn(budget: TimeBudget | None, *, apply: Callable[[int], None], reserve_s: Callable[[], float],
              write: Callable[[dict[str, Any]], None],
              broadcast: Callable[[int], int] | None = None) -> Callable[[LoopState], int]:
    """``fit``'s ``replan``, asked before every epoch (on every rank: it may be a collective).
    Rank 0 (``budget`` given) plans from its clock and ``reserve_s()``, journals (``write``) and
    logs; ``broadcast`` (Ray Train's, with several ranks) hands the number to every rank, and
    ``apply(epochs)`` re-derives the schedule and the input's close-mosaic window there."""
    def replan(state: LoopState) -> int:
        epochs = -1
        if budget is not None:
            if budget._last is None:
                budget.start()
            before = budget.plans[-1].epochs if budget.plans else budget.max_epochs
            plan = budget.plan(state.epoch, reserve_s())
            write(budget.journal())
            epochs = plan.epochs
            if epochs <= state.epoch and state.epoch < budget.max_epochs:
                log.warning("%s: no further epoch fits; the run ends after epoch %d", _describe(budget, plan), state.epoch)
            elif epochs != before:
                log.info("%s: %d epochs in all (train.epochs=%d)", _describe(budget, plan), epochs, budget.max_epochs)
        if broadcast is not None:
            epochs = broadcast(epochs)
        apply(epochs)
        return epochs

    return replan


def _describe(budget: TimeBudget, plan: Plan) -> str:
    return (f"time budget (train.time_budget_h={budget.budget_s / 3600:g}): {plan.spent_s:.0f} s spent, epochs of "
            f"~{plan.epoch_s:.1f} s, {plan.reserve_s:.0f} s kept for the last validation")
