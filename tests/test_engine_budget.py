"""The wall-clock budget (``train.time_budget_h``, engine/budget.py): the arithmetic of a plan, the
loop ending at the planned boundary with the LR schedule re-derived, and the train job on real
local Ray stopping early, closing mosaic at the re-planned epoch and resuming with what is left.

Load never decides an outcome: the loop and the job are handed a clock whose epochs take a known
time (``tests/_budget_clock.py``, through the seam the job's own ``time.monotonic`` uses)."""

from __future__ import annotations

import pytest
from _budget_clock import StepClock
from test_engine_loop import TinyHead, batches, parts_for

from cocoseg.engine.budget import (
    Plan,
    TimeBudget,
    end_reserve_s,
    planned_epochs,
    replan_fn,
    replan_schedule,
)
from cocoseg.engine.loop import LoopState, fit
from cocoseg.engine.optim import Schedule, lr_factor


@pytest.mark.parametrize(("budget_s", "spent_s", "done", "epoch_s", "reserve_s", "expected"), [
    (100, 10, 1, 10, 0, 10),  # 90 s left: 9 more epochs of 10 s
    (100, 10, 1, 10, 5, 9),  # the reserve takes half an epoch: 8 more
    (100, 10, 1, 30, 0, 4),  # floor: 3 more, never a partial one
    (100, 95, 3, 10, 0, 3),  # nothing fits: stop after the 3 trained
    (100, 120, 3, 10, 0, 3),  # over already: the same, never fewer than done
    (10_000, 10, 1, 10, 0, 20),  # capped at train.epochs
    (100, 0, 0, 0, 0, 20),  # nothing timed yet: train.epochs
])
def test_planned_epochs_are_the_whole_epochs_that_fit(budget_s, spent_s, done, epoch_s, reserve_s, expected):
    assert planned_epochs(budget_s=budget_s, spent_s=spent_s, done=done, epoch_s=epoch_s, reserve_s=reserve_s,
                          max_epochs=20) == expected


def test_reserve_is_the_longest_validation_times_the_queue():
    assert end_reserve_s([3.0, 7.0, 5.0]) == 7.0
    assert end_reserve_s([]) == 0.0  # nothing measured yet
    assert end_reserve_s([7.0], backlog=3, concurrency=2) == 14.0  # 4 validations, 2 at a time


def test_replanned_schedule_decays_to_the_new_end_and_leaves_the_last_epoch_out_of_warm_up():
    base = Schedule(epochs=100, batches_per_epoch=10, global_batch=8, lr0=0.01, lrf=0.01, warmup_epochs=3.0,
                    min_warmup_steps=100)
    short = replan_schedule(base, 3)
    assert short.epochs == 3 and short.warmup_steps == 20  # 2 epochs of 10 (the step floor cut to 20)
    last = short.at(29)  # the last micro-batch of epoch 2: the regular schedule at its end
    assert last.lrs[1] == pytest.approx(0.01 * lr_factor(2, 3, 0.01, False))
    assert base.at(29).lrs[1] < 0.01 * 29 / 100 + 1e-12  # the old plan would still be warming up
    assert replan_schedule(base, 1).warmup_steps == 0
    assert replan_schedule(base, 100) == base  # a plan that keeps train.epochs changes nothing


def test_budget_times_epochs_and_a_resume_counts_on_from_the_larger_record():
    clock = StepClock(10.0)
    budget = TimeBudget(budget_s=100.0, max_epochs=20, clock=clock)
    budget.start()
    assert budget.plan(0, 0.0).epochs == 20  # nothing timed
    assert budget.epoch_ended(0, preset="yolov8", validation_s=2.0) == 10.0
    plan = budget.plan(1, end_reserve_s(budget.validation_s))
    assert plan == Plan(before_epoch=1, epochs=9, spent_s=10.0, epoch_s=10.0, reserve_s=2.0, budget_s=100.0)
    budget.epoch_ended(1, timed=False)  # an epoch resumed from its middle is spent, not timed
    assert (budget.spent_s, budget.timed_epochs, budget.epoch_s) == (20.0, 1, 10.0)
    journal = budget.journal()
    again = TimeBudget.resumed(100 / 3600, 20, journal, checkpoint_spent_s=15.0, clock=StepClock(10.0))
    assert (again.spent_s, again.epoch_s, again.presets, again.plans) == (20.0, 10.0, {"0": "yolov8"}, budget.plans)
    assert TimeBudget.resumed(100 / 3600, 20, None, checkpoint_spent_s=15.0).spent_s == 15.0


def test_loop_ends_at_the_planned_boundary_with_the_schedule_of_the_plan():
    """Epochs of 10 s, a 35 s budget, train.epochs 8: after epoch 0, 35 - 10 spent holds 2 more
    whole epochs: the loop trains 0..2 then ends, and the LR of every epoch is the schedule of the
    plan in force then."""
    parts = parts_for(TinyHead(), nominal=2, epochs=8, batches_per_epoch=2)
    base = parts.schedule
    budget = TimeBudget(budget_s=35.0, max_epochs=8, clock=StepClock(10.0))
    plans: list[int] = []

    def apply(epochs: int) -> None:
        parts.schedule = replan_schedule(base, epochs)
        plans.append(epochs)

    lrs: dict[int, float] = {}

    def on_epoch_end(result):
        lrs[result.epoch] = result.metrics["lr/weight"]
        budget.epoch_ended(result.epoch)

    replan = replan_fn(budget, apply=apply, reserve_s=lambda: 0.0, write=lambda doc: None)
    state = fit(parts, epochs=8, state=LoopState(), train_batches=lambda e: batches(2), validate=None,
                on_epoch_end=on_epoch_end, replan=replan)
    assert plans == [8, 3, 3] and state.epoch == 3 and sorted(lrs) == [0, 1, 2]
    for epoch in (1, 2):  # the last micro-batch of the epoch (2 per epoch), under the 3-epoch plan
        assert lrs[epoch] == pytest.approx(replan_schedule(base, 3).at(2 * epoch + 1).lrs[1])
    assert lrs[0] == pytest.approx(base.at(1).lrs[1])  # planned before anything was timed


@pytest.mark.extended  # two runs (~1 min on 2 cores); make test: test_train_pipeline's run stops early on its budget
@pytest.mark.timeout(1200)
def test_job_stops_within_its_budget_replans_and_a_resume_counts_on(tiny_snapshot, mlflow_server, tmp_path):
    """The train job on real local Ray (1 worker, in-process validation), epochs of 1000 s on the
    injected clock, train.epochs 6, close_mosaic 2. A budget of 3500 s: after epoch 0 the run plans
    3 epochs (1000 spent + 2 x 1000 + the validation reserve), trains 0..2 and ends validated with
    weights/best; epochs 1..2 close mosaic (the last 2 of 3, not of 6) and decay the LR to the new
    end. Then the same run resumed with 6500 s: the journal's 4000 s spent (3 epochs and the end)
    leave room for 2 more epochs, so it ends after epoch 4, not at train.epochs."""
    import _budget_clock
    from _train_support import TINY
    from ray import cloudpickle

    from cocoseg import storage, tracking
    from cocoseg.config import load_config
    from cocoseg.engine.budget import BUDGET_FILE
    from cocoseg.engine.trainer import train
    from cocoseg.model.weights import load_checkpoint

    cloudpickle.register_pickle_by_value(_budget_clock)  # the worker does not have tests/ on its path

    def run(budget_s: float):
        cfg = load_config(None, [*TINY, f"storage.root={tmp_path}", f"train.snapshot={tiny_snapshot}", "train.epochs=6",
                                 "train.close_mosaic=2", "train.optimizer=SGD", "train.lr0=0.01", "train.lrf=0.01",
                                 "train.preview_images=0", f"train.time_budget_h={budget_s / 3600}",
                                 f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=t-budget",
                                 "tracking.run_name=budget"])
        result = train(cfg, clock=StepClock(1000.0))
        doc = storage.read_json(storage.join(result.run_dir, "tracking", BUDGET_FILE))
        journal = {r["step"]: r["metrics"] for r in tracking.read_journal(tracking.journal_uri(result.run_dir))}
        for plan in doc["plans"]:  # every decision is the arithmetic of what it recorded
            assert plan["epochs"] == planned_epochs(budget_s=plan["budget_s"], spent_s=plan["spent_s"], done=plan["before_epoch"],
                                                    epoch_s=plan["epoch_s"], reserve_s=plan["reserve_s"], max_epochs=6)
        return result, doc, journal

    result, doc, journal = run(3500.0)
    assert [p["epochs"] for p in doc["plans"]] == [6, 3, 3] and sorted(journal) == [0, 1, 2]
    assert doc["presets"] == {"0": "yolov8", "1": "yolov8-close", "2": "yolov8-close"}
    assert journal[2]["lr/weight"] == pytest.approx(0.01 * lr_factor(2, 3, 0.01, False))  # past the shortened warm-up
    assert doc["spent_s"] == 4000.0 and all("val/mask_ap50_95" in journal[e] for e in journal)
    _, card = load_checkpoint(result.last_weights, variant="n", num_classes=4)
    assert card.metrics["epoch"] == 2 and "val/mask_ap50_95" in card.metrics
    load_checkpoint(result.best_weights, variant="n", num_classes=4)

    result, doc, journal = run(6500.0)
    resumed = doc["plans"][3]
    assert (resumed["before_epoch"], resumed["spent_s"], resumed["epoch_s"], resumed["epochs"]) == (3, 4000.0, 1000.0, 5)
    assert sorted(journal) == [0, 1, 2, 3, 4] and doc["presets"]["3"] == doc["presets"]["4"] == "yolov8-close"
    assert journal[4]["lr/weight"] == pytest.approx(0.01 * lr_factor(4, 5, 0.01, False))
