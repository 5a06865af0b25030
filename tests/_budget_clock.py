"""A clock for ``train.time_budget_h`` tests (``cocoseg.engine.trainer.train(clock=...)``): its n-th
reading is ``n * step_s``. The budget reads its clock once when an attempt's epoch loop starts,
once per epoch end and once at the run's end (engine/budget.py), so every epoch takes ``step_s``
whatever the machine's load. Picklable: it travels to the train worker."""

from __future__ import annotations


class StepClock:
    def __init__(self, step_s: float):
        self.step_s, self.readings = float(step_s), 0

    def __call__(self) -> float:
        value = self.readings * self.step_s
        self.readings += 1
        return value
