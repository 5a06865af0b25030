"""Spot GPUs and stuck ranks, the fast part (``make test``): the code paths that the long
cluster tests (``test_spot_cluster.py``, ``extended``) drive through Ray Train, here where they are
Ray-free or on the session's local Ray.

- resumption inside an epoch: the plan position turned back into the untrained chunks (same world:
  the very chunks and rows an uninterrupted run trains next; another world: each untrained row once),
  and the real input actors delivering exactly the rest of an epoch, bit for bit;
- the just-in-time checkpoint: the poll only at every k-th optimiser step, a checkpoint at each
  poll once a notice came, the journal's ``progress`` records and the steps lost counted from them;
  a mid-epoch checkpoint ordered after its epoch's start and before its end (``latest_complete``),
  its position and every rank's RNG saved and read back;
- the hang watchdog: a thread stuck in a wait and a rank that never answers, detected, stacks
  dumped with the stuck frame, the ``hang`` record naming the silent rank; the timeouts.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from augment_rows import make_rows, write_split

from cocoseg.data.plan_position import PlanPosition, resume_chunks, split_at
from cocoseg.data.stage import epoch_chunks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _rows_of(chunks) -> list[tuple[int, int]]:
    return [(shard, row) for chunk in chunks for shard, a, b in chunk for row in range(a, b)]


@pytest.mark.parametrize("shards,chunk_rows,runs,rare", [([40, 13, 27], 8, 4, False), ([101], 16, 4, False),
                                                         ([5, 5, 5, 5], 3, 1, False), ([40, 13, 27], 8, 4, True)])
def test_resume_chunks_continue_the_plan_exactly(shards, chunk_rows, runs, rare) -> None:
    # rare: a plan with repeat-factor copies (data.repeat_factor_threshold): every 5th row 2.5x
    repeats = [np.where(np.arange(n) % 5 == 0, 2.5, 1.0) for n in shards] if rare else None

    def plan(epoch):
        return lambda r, w: epoch_chunks(shards, seed=3, epoch=epoch, rank=r, world=w, chunk_rows=chunk_rows,
                                         runs_per_chunk=runs, repeats=repeats)

    world = 2
    for rank in range(world):
        full = plan(1)(rank, world)
        total = len(_rows_of(full))
        for done in sorted({0, 1, chunk_rows - 1, chunk_rows, chunk_rows + 3, total // 2, total - 1, total}):
            rest, drop = resume_chunks(plan(1), PlanPosition(1, world, done), rank, world, chunk_rows)
            first, into = split_at(full, done)
            assert rest == full[first:] and drop == into  # the plan's own chunks: the same mosaic partners
            assert _rows_of(full)[:done] + _rows_of(rest)[drop:] == _rows_of(full)  # once each, in order
    # another world size (an elastic group after a node loss): the untrained rows (and copies), each
    # once, re-split
    done = 7
    untrained = Counter(row for r in range(world) for row in _rows_of(plan(1)(r, world))[done:])
    parts = [resume_chunks(plan(1), PlanPosition(1, world, done), r, 3, chunk_rows) for r in range(3)]
    got = Counter(row for chunks, drop in parts for row in _rows_of(chunks))
    assert all(drop == 0 for _, drop in parts) and not got - untrained
    assert sum(untrained.values()) - sum(got.values()) < 3
    assert len({len(_rows_of(c)) for c, _ in parts}) == 1  # equal parts
    with pytest.raises(ValueError, match="fewer than"):
        split_at(plan(1)(0, world), 10_000)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_split(make_rows(30, (96, 80), instances=2), tmp_path_factory.mktemp("snapshot") / "train",
                       rows_per_file=10)


def test_the_input_actors_deliver_exactly_the_rest_of_an_epoch(ray_local, split: list[str]) -> None:
    """A resumed stream (a new one, as in a restarted worker) gives the rows an uninterrupted
    one gives after the trained ones, the same pixels, in the same batches."""
    from cocoseg.data.train_input import TrainInput

    inputs = TrainInput.start([(u, 10) for u in split], augment="yolov8", epochs=2, close_mosaic=0, imgsz=64,
                              num_classes=4, seed=5, actors=1, cpus_per_actor=0.5, chunk_rows=4)
    batch = 3
    try:
        full = list(inputs.for_worker(1, 2).epoch(1, batch_size=batch))
        ids = np.concatenate([b["image_id"] for b in full])
        images = np.concatenate([b["image"] for b in full])
        assert len(ids) == 15 and len(set(ids.tolist())) == 15
        # chunks of 4 rows: 6 = two batches, inside the 2nd chunk; 8 = a chunk boundary; 5 = no batch boundary
        for done in (6, 8, 5):
            rest = list(inputs.for_worker(1, 2).epoch(1, batch_size=batch, position=PlanPosition(1, 2, done)))
            assert np.array_equal(np.concatenate([b["image_id"] for b in rest]), ids[done:])
            assert np.array_equal(np.concatenate([b["image"] for b in rest]), images[done:])
            if done == 6:  # the same batches as the uninterrupted run from there on
                assert [len(b["image_id"]) for b in rest] == [len(b["image_id"]) for b in full[2:]]
    finally:
        inputs.stop()


def test_poll_every_k_optimiser_steps_checkpoint_each_poll_after_a_notice(tmp_path: Path) -> None:
    from cocoseg.engine.loop import LoopState
    from cocoseg.engine.preemption import PreemptionPoller, steps_lost
    from cocoseg.tracking.journal import read_attempts, record_attempt

    run_dir = str(tmp_path)
    notice_at_poll = 3  # the notice is there from the 3rd poll on
    polls: list[int] = []
    saved: list[int] = []

    def poll():
        polls.append(state.micro_step)
        return type("Info", (), {"deadline_ms": 1234, "preempted_ranks": [1], "preempted_node_ids": ["n1"]})() \
            if len(polls) >= notice_at_poll else None

    poller = PreemptionPoller(every=2, poll=poll, save=lambda s: saved.append(s.micro_step),
                              note=lambda kind, f: record_attempt(run_dir, kind, f))
    record_attempt(run_dir, "start", {"ni": 0})
    state = LoopState()
    accumulate = 3
    for _ in range(42):  # micro-batches; an optimiser step every `accumulate`
        state.micro_step += 1
        if state.micro_step % accumulate == 0:
            state.last_step_at = state.micro_step - 1
        state.epoch_rows += 4
        poller(state)
    # optimiser steps end at ni 3, 6, 9, ...; polled at the 1st and then every 2nd one: ni 3, 9, 15, ...
    assert polls == list(range(3, 43, 6))
    assert saved == polls[notice_at_poll - 1:]
    records = read_attempts(run_dir)
    kinds = [r["kind"] for r in records]
    assert kinds.count("preemption") == 1 and kinds.count("jit_checkpoint") == len(saved)
    assert next(r for r in records if r["kind"] == "preemption")["ranks"] == [1]
    # the next attempt resumed from the last checkpoint: the steps after it are lost (< k = 2)
    record_attempt(run_dir, "start", {"ni": saved[-1]})
    assert steps_lost(read_attempts(run_dir)) == [1]  # the optimiser step ending at ni 42
    with pytest.raises(ValueError, match="unknown kind"):
        record_attempt(run_dir, "crash", {})


def test_mid_epoch_checkpoint_orders_between_epoch_ends_and_carries_its_position(tmp_path: Path) -> None:
    import torch

    from cocoseg.config import load_config, to_dict
    from cocoseg.engine import build
    from cocoseg.engine import checkpoint as ckpt
    from cocoseg.engine.ema import ModelEMA
    from cocoseg.engine.loop import LoopState
    from cocoseg.engine.spot import resume_inside_epoch

    cfg = load_config(None, ["model.variant=n", "model.num_classes=2", "model.imgsz=64"])
    model = build.build_model(cfg.model)
    ema = ModelEMA(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    card = build.model_card(cfg, snapshot_id="s", class_names=("a", "b"), metrics={}, epoch=0)
    rngs = []
    for r in range(2):
        torch.manual_seed(100 + r)
        rngs.append(ckpt.capture_rng())
    common = dict(model=model, ema=ema, optimizer=opt, scaler=None, best_fitness=0.1, config=to_dict(cfg), card=card)
    run = tmp_path / "run"
    ckpt.save_checkpoint(run / "checkpoint_epoch-0000", epoch=0, micro_step=10, **common)
    mid = {"position": PlanPosition(1, 2, 24).to_dict(), "rng_ranks": rngs}
    ckpt.save_checkpoint(run / "checkpoint_epoch-0001-ni-000000013", epoch=0, micro_step=13, mid_epoch=mid, **common)
    assert ckpt.latest_complete(str(run)) == (str(run / "checkpoint_epoch-0001-ni-000000013"), 0)
    saved = ckpt.load_train_state(run / "checkpoint_epoch-0001-ni-000000013")
    state = LoopState(epoch=saved["epoch"] + 1, micro_step=saved["ni"])
    torch.manual_seed(0)
    resume_inside_epoch(saved, state, rank=1, world=2)
    assert (state.epoch, state.epoch_rows, state.epoch_world) == (1, 24, 0)
    assert torch.equal(torch.get_rng_state(), rngs[1]["torch"])  # this rank's own RNG, not rank 0's
    other = LoopState(epoch=1, micro_step=13)
    resume_inside_epoch(saved, other, rank=0, world=3)
    assert (other.epoch_rows, other.epoch_world) == (24, 2)
    ckpt.save_checkpoint(run / "checkpoint_epoch-0001", epoch=1, micro_step=20, **common)
    assert ckpt.latest_complete(str(run)) == (str(run / "checkpoint_epoch-0001"), 1)
    assert ckpt.check_complete(run / "checkpoint_epoch-0001-ni-000000013")["mid_epoch"] is True


def _stuck_in_a_collective(release: threading.Event) -> None:
    release.wait()


def test_watchdog_dumps_stacks_and_journals_the_silent_rank(tmp_path: Path) -> None:
    """Rank 0's training thread blocks (as in a collective whose peer froze); rank 1 never answers
    (its watchdog never runs, as when SIGSTOPped). Rank 0's watchdog fires, dumps its stacks with
    the blocked frame, names rank 1 in the ``hang`` record and fails the group (``on_hang``)."""
    from cocoseg.engine.watchdog import HangWatchdog
    from cocoseg.tracking.journal import read_attempts

    run_dir = str(tmp_path)
    failed = threading.Event()
    release = threading.Event()
    box: dict = {}

    def training_thread():
        dog = HangWatchdog(rank=0, world=2, run_dir=run_dir, attempt="a1", timeout_s=0.3, floor_s=0.3,
                           check_s=0.05, grace_s=0.3, on_hang=failed.set, node="n0").start()
        box["dog"] = dog
        dog.arm()
        for step in range(3):
            dog.phase = "input"
            dog.beat(step)
        dog.phase = "step"
        _stuck_in_a_collective(release)
        dog.stop()

    t = threading.Thread(target=training_thread)
    t.start()
    try:
        assert failed.wait(60), "the watchdog did not fail the group"
    finally:
        release.set()
        t.join(10)
    hang = [r for r in read_attempts(run_dir) if r["kind"] == "hang"]
    assert len(hang) == 1 and hang[0]["stuck_ranks"] == [1] and hang[0]["answered"] == [0]
    assert "no answer" in hang[0]["frames"]["1"] and hang[0]["steps"] == {"0": 2}
    report = (tmp_path / "hangs" / "a1" / "rank0.json").read_text()
    assert "_stuck_in_a_collective" in (tmp_path / "hangs" / "a1" / "rank0.txt").read_text()
    assert '"phase": "step"' in report and "threading.py" in report  # the innermost frame: Event.wait


def test_stuck_rank_choice_and_timeouts() -> None:
    from cocoseg.engine.watchdog import (
        HANG_CAP_S,
        HANG_FLOOR_S,
        auto_timeout,
        collective_timeout_s,
        stuck_ranks,
    )

    def rep(step, phase="step"):
        return {"step": step, "phase": phase}

    assert stuck_ranks({0: rep(5), 1: rep(5)}, 3) == [2]  # silent
    assert stuck_ranks({0: rep(5), 1: rep(4), 2: rep(5)}, 3) == [1]  # behind
    assert stuck_ranks({0: rep(5), 1: rep(5, "input")}, 2) == [1]  # waiting on input while the other waits in a step
    assert stuck_ranks({0: rep(5), 1: rep(5)}, 2) == [0, 1]
    assert auto_timeout([0.5] * 3) == HANG_FLOOR_S  # too few steps measured: the floor
    assert auto_timeout([0.5] * 20) == HANG_FLOOR_S and auto_timeout([4.0] * 20) == 200.0
    assert auto_timeout([60.0] * 20) == HANG_CAP_S
    assert 30 < collective_timeout_s(30) < 30 + 80 and HANG_CAP_S < collective_timeout_s(0) < 1800
    from cocoseg.engine.watchdog import HangWatchdog

    dog = HangWatchdog(rank=0, world=1, run_dir="unused", attempt="a", timeout_s=5)
    assert dog.timeout_s() == HANG_FLOOR_S  # the first step: input, first collectives, autotuning
    dog.beat(0)
    assert dog.timeout_s() == 5
