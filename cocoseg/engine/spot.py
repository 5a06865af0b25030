"""Spot GPUs and stuck ranks, the Ray side: what ``worker.py`` hooks into its loop.

:class:`Guard` holds, for one worker of one attempt (a worker group's life):

- the hang watchdog (:mod:`cocoseg.engine.watchdog`): armed while an epoch trains, a beat per
  micro-batch, the phase (``input``: waiting for the next batch; ``step``: training it);
- the preemption poll (:mod:`cocoseg.engine.preemption`) around ``ray.train.get_preemption_info``,
  every ``scaling.preemption_poll_steps`` optimiser steps, and the just-in-time checkpoint it
  asks for: the position in the seeded epoch plan (:class:`cocoseg.data.plan_position.PlanPosition`)
  and every rank's RNG states (gathered over the process group), written by the worker's
  checkpoint writer (``save``);
- the attempt journal's ``start`` record (rank 0);
- with ``COCOSEG_TRACE_IMAGES=1`` (a debugging aid; the spot tests read it), the image ids of
  every trained micro-batch, per rank and attempt, in ``<run dir>/trace/`` (local run folders only).

A resumed worker continues inside the epoch a mid-epoch checkpoint was written in
(:func:`resume_inside_epoch`): its stream skips the rows already trained.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.collective
import torch.distributed as dist

from cocoseg import storage
from cocoseg.config import JobConfig
from cocoseg.data.plan_position import PlanPosition
from cocoseg.engine.checkpoint import capture_rng, restore_rng
from cocoseg.engine.loop import LoopState
from cocoseg.engine.preemption import PreemptionPoller
from cocoseg.engine.watchdog import HangWatchdog
from cocoseg.tracking.journal import record_attempt
from cocoseg.utils import get_logger

__all__ = ["MID_EPOCH_KEY", "TRACE_ENV", "Guard", "resume_inside_epoch"]

log = get_logger(__name__)

MID_EPOCH_KEY = "mid_epoch_ni"  # in the metrics of a just-in-time checkpoint's report (its micro_step)
TRACE_ENV = "COCOSEG_TRACE_IMAGES"


def resume_inside_epoch(saved: dict[str, Any], state: LoopState, rank: int, world: int) -> None:
    """A mid-epoch checkpoint: put the plan position into ``state`` and restore this rank's RNG."""
    mid = saved.get("mid_epoch")
    if not mid:
        return
    position = PlanPosition.from_dict(mid["position"])
    state.epoch_rows = position.rows_done
    state.epoch_world = position.world if position.world != world else 0
    rngs = mid.get("rng_ranks") or []
    if position.world == world and rank < len(rngs):
        restore_rng(rngs[rank])
    log.info("rank %d resumes inside epoch %d after %d trained rows of its part (micro-step %d)",
             rank, position.epoch, position.rows_done, state.micro_step)


def _gather_rng(world: int) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (all ranks call it: a collective)."""
    mine = capture_rng()
    if world > 1 and dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * world
        dist.all_gather_object(out, mine)
        return out
    return [mine]


class Guard:
    """One worker's watchdog, preemption poll and trace (see the module doc)."""

    def __init__(self, *, rank: int, world: int, run_dir: str, attempt: str, watchdog: HangWatchdog | None,
                 poller: PreemptionPoller | None, save: Callable[[LoopState, dict[str, Any]], None]):
        self.rank, self.world, self.run_dir, self.attempt = rank, world, run_dir, attempt
        self.watchdog, self.poller, self.save = watchdog, poller, save
        self._ids: Any = None
        self._trace = None
        if os.environ.get(TRACE_ENV) == "1" and not storage.is_s3(run_dir):
            path = Path(run_dir) / "trace" / f"rank{rank}-{attempt}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._trace = path.open("a")

    @classmethod
    def start(cls, cfg: JobConfig, *, run, state: LoopState, rank: int, world: int,
              save: Callable[[LoopState, dict[str, Any]], None]) -> Guard:
        """All ranks, after the resume: agree on an attempt id, journal the start, start the watchdog."""
        attempt = uuid.uuid4().hex[:12]
        if world > 1:  # Ray Train's own collective: the same id on every rank
            attempt = ray.train.collective.broadcast_from_rank_zero(attempt)
        node = ray.get_runtime_context().get_node_id()
        s = cfg.scaling
        if rank == 0:
            record_attempt(run.run_dir, "start", {"attempt": attempt, "world": world, "epoch": state.epoch,
                                                  "ni": state.micro_step, "epoch_rows": state.epoch_rows, "node": node})
        watchdog = None
        if s.hang_timeout_s >= 0:
            watchdog = HangWatchdog(rank=rank, world=world, run_dir=run.run_dir, attempt=attempt,
                                    timeout_s=s.hang_timeout_s, node=node).start()

        def note(kind: str, fields: dict[str, Any]) -> None:
            if rank == 0:
                record_attempt(run.run_dir, kind, {"attempt": attempt, **fields})

        guard = cls(rank=rank, world=world, run_dir=run.run_dir, attempt=attempt, watchdog=watchdog,
                    poller=None, save=save)
        guard.poller = PreemptionPoller(every=s.preemption_poll_steps, poll=ray.train.get_preemption_info,
                                        save=guard._save_mid_epoch, note=note)
        return guard

    def epoch_rows(self, stream, epoch: int, batch_size: int, state: LoopState) -> Iterator[dict[str, np.ndarray]]:
        """This rank's input of ``epoch`` (``stream``: its ``EpochStream``), only the untrained rows
        when the run resumed inside it; the watchdog is armed while it runs."""
        position = None
        if state.epoch_rows and state.epoch == epoch:
            position = PlanPosition(epoch=epoch, world=state.epoch_world or self.world, rows_done=state.epoch_rows)
            if state.epoch_world:  # the rows now count on another split: see _save_mid_epoch
                state.epoch_rows = 0
        if self.watchdog is not None:
            self.watchdog.arm()
        for rows in stream.epoch(epoch, batch_size=batch_size, position=position):
            self._mark("step")
            self._ids = rows.get("image_id")
            yield rows
            self._mark("input")
        self.epoch_done()  # before rank 0 validates: no steps until the next epoch

    def _mark(self, phase: str) -> None:
        if self.watchdog is not None:
            self.watchdog.phase = phase

    def on_step(self, state: LoopState) -> None:
        """After every micro-batch: beat, trace, poll."""
        if self.watchdog is not None:
            self.watchdog.beat(state.micro_step)
        if self._trace is not None and self._ids is not None:
            self._trace.write(json.dumps({"epoch": state.epoch, "ni": state.micro_step - 1,
                                          "ids": [int(i) for i in self._ids]}) + "\n")
            self._trace.flush()
        if self.poller is not None:
            self.poller(state)

    def _save_mid_epoch(self, state: LoopState) -> None:
        if state.epoch_world:
            # Resumed inside this epoch on another world size: the rows trained since are counted on
            # the new split, which a position cannot name; the epoch's end checkpoints as usual.
            log.warning("preemption notice: no just-in-time checkpoint in epoch %d (resumed inside it on another "
                        "world size); its end checkpoint comes as usual", state.epoch)
            return
        position = PlanPosition(epoch=state.epoch, world=self.world, rows_done=state.epoch_rows)
        if self.watchdog is not None:
            with self.watchdog.paused():
                self.save(state, {"position": position.to_dict(), "rng_ranks": _gather_rng(self.world)})
        else:
            self.save(state, {"position": position.to_dict(), "rng_ranks": _gather_rng(self.world)})
        if self.rank == 0:
            log.warning("preemption notice: just-in-time checkpoint at micro-step %d (epoch %d, %d rows of this "
                        "rank's part trained); training goes on until the node goes", state.micro_step, state.epoch,
                        state.epoch_rows)

    def epoch_done(self) -> None:
        if self.watchdog is not None:
            self.watchdog.disarm()

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self._trace is not None:
            self._trace.close()
