"""Hang watchdog: a rank that stops making progress without dying fails its group within
``scaling.hang_timeout_s``, with every rank's Python stacks on record. No Ray here (``worker.py``
wires it in).

Each rank runs one :class:`HangWatchdog` thread. The training loop *beats* after every
micro-batch (two attribute writes); the watchdog is *armed* only while an epoch trains (validation,
checkpoints and the report barrier are not watched: they have no steps). When the beats stop for
the timeout, the rank's watchdog:

1. dumps all its threads' Python stacks (``faulthandler``) into the log and into
   ``<run dir>/hangs/<attempt>/rank<r>.txt``, with a summary (step, phase, the training thread's
   innermost frame) in ``rank<r>.json``;
2. waits ``grace_s`` for the other ranks' summaries (a hang in one rank stalls the others at
   their next collective, so their watchdogs fire within about one check interval of each other);
3. the lowest rank that answered writes the ``hang`` record of the attempt journal
   (``cocoseg.tracking.journal``): the stuck rank(s) (:func:`stuck_ranks`: one that never answered,
   being frozen or gone, else the one(s) furthest behind) and the frame each was in;
4. ends its own process (``on_hang``, by default ``os._exit``): Ray Train sees the worker die and
   restarts the group from the newest complete checkpoint (``FailureConfig.max_failures``).

A rank that cannot run at all (SIGSTOPped, a whole node frozen) cannot dump its own stacks; its
record then says it did not answer, with the step and phase of its last beat as the others
cannot know them either: the phase it reported is its own ``rank<r>.json`` only when it answers.

Timeout: ``scaling.hang_timeout_s`` when > 0, else :func:`auto_timeout` from the median step time
measured so far (``STEP_FACTOR`` times it, at least ``HANG_FLOOR_S``, at most ``HANG_CAP_S``). Until
the attempt's first beat it is at least ``HANG_FLOOR_S``: the first step also waits for the input
actors' first chunks, the first collectives (NCCL builds its communicators then) and kernel
autotuning, which a timeout sized for steady steps would take for a hang. The
process group's collective timeout is :func:`collective_timeout_s`: just above the watchdog's, so
the watchdog (with stacks) fires first and the collective timeout is a backstop, not NCCL's or
gloo's 30-minute default.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from cocoseg import storage
from cocoseg.utils import get_logger

__all__ = ["HANG_CAP_S", "HANG_FLOOR_S", "HangWatchdog", "auto_timeout", "collective_timeout_s", "stuck_ranks"]

log = get_logger(__name__)

HANG_FLOOR_S = 120.0  # the automatic timeout never goes below this (first steps, input restarts)
HANG_CAP_S = 600.0  # ... nor above this (the collective timeout must stay above it)
STEP_FACTOR = 50.0  # automatic timeout: this many median steps
MIN_SAMPLES = 8  # step times needed before the median is trusted (the floor applies before)
COLLECTIVE_MARGIN_S = 60.0  # collective timeout over the watchdog's timeout and grace
HANG_EXIT_CODE = 86


def auto_timeout(step_times: list[float] | deque[float], floor_s: float = HANG_FLOOR_S,
                 cap_s: float = HANG_CAP_S) -> float:
    """Seconds without progress that count as a hang when ``scaling.hang_timeout_s`` is 0."""
    if len(step_times) < MIN_SAMPLES:
        return floor_s
    return max(floor_s, min(cap_s, STEP_FACTOR * statistics.median(step_times)))


def grace_for(timeout_s: float) -> float:
    """How long a rank that timed out waits for the others' reports (seconds)."""
    return min(15.0, max(1.0, timeout_s / 4))


def collective_timeout_s(hang_timeout_s: float) -> float:
    """The process group's collective timeout for ``scaling.hang_timeout_s`` (0: automatic)."""
    watched = hang_timeout_s if hang_timeout_s > 0 else HANG_CAP_S
    return watched + grace_for(watched) + COLLECTIVE_MARGIN_S


def stuck_ranks(reports: Mapping[int, Mapping[str, Any]], world: int) -> list[int]:
    """The rank(s) to blame, from the summaries of the ranks that answered.

    A rank that did not answer (frozen, or its process gone) is stuck; if all answered, the ones
    whose last beat is the furthest behind; if all are at the same step, the ones outside a
    step (waiting on input) while the others wait inside one; else all of them.
    """
    silent = [r for r in range(world) if r not in reports]
    if silent:
        return silent
    low = min(int(rep["step"]) for rep in reports.values())
    behind = sorted(r for r, rep in reports.items() if int(rep["step"]) == low)
    if len(behind) < len(reports):
        return behind
    waiting = sorted(r for r, rep in reports.items() if rep.get("phase") == "input")
    return waiting if 0 < len(waiting) < len(reports) else sorted(reports)


def _frame_of(ident: int | None) -> str:
    """``file:line in function`` of the innermost frame of thread ``ident`` ("" when gone)."""
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return ""
    last = traceback.extract_stack(frame)[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


def dump_stacks() -> str:
    """Every thread's Python stack in this process, as ``faulthandler`` prints them."""
    with tempfile.TemporaryFile(mode="w+") as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        return f.read()


class HangWatchdog:
    """One rank's watchdog (see the module doc). ``attempt`` names this worker group (the same
    on every rank); ``timeout_s`` 0: automatic. Create it on the training thread."""

    def __init__(self, *, rank: int, world: int, run_dir: str, attempt: str, timeout_s: float = 0.0,
                 floor_s: float = HANG_FLOOR_S, check_s: float = 0.0, grace_s: float = 0.0,
                 on_hang: Callable[[], None] | None = None, node: str = ""):
        self.rank, self.world, self.run_dir, self.attempt = rank, world, run_dir, attempt
        self.fixed_s, self.floor_s = float(timeout_s), float(floor_s)
        self.check_s = check_s or max(0.05, min(5.0, (self.fixed_s or floor_s) / 10))
        self.grace_s = grace_s or grace_for(self.fixed_s or floor_s)
        self.on_hang = on_hang or (lambda: os._exit(HANG_EXIT_CODE))
        self.node = node
        self.step, self.phase = -1, "start"
        self.fired = threading.Event()
        self._ident = threading.get_ident()
        self._armed = False
        self._last = time.monotonic()
        self._times: deque[float] = deque(maxlen=200)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cocoseg-hang-watchdog", daemon=True)

    # --- the training thread's side (cheap) ---
    def start(self) -> HangWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def arm(self) -> None:
        self._last, self._armed = time.monotonic(), True

    def disarm(self) -> None:
        self._armed = False

    def beat(self, step: int) -> None:
        now = time.monotonic()
        if self._armed and self.step >= 0:
            self._times.append(now - self._last)
        self._last, self.step, self.phase = now, int(step), "step"

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Not watched inside (a checkpoint write and its report barrier); re-armed after."""
        armed, self._armed = self._armed, False
        try:
            yield
        finally:
            self._last, self._armed = time.monotonic(), armed

    def timeout_s(self) -> float:
        if self.step < 0:  # the attempt's first step (see the module doc)
            return max(self.fixed_s, self.floor_s)
        return self.fixed_s if self.fixed_s > 0 else auto_timeout(self._times, self.floor_s)

    # --- the watchdog thread ---
    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            stalled = time.monotonic() - self._last
            if self._armed and stalled > self.timeout_s():
                self._fire(stalled)
                return

    def _folder(self) -> str:
        return storage.join(self.run_dir, "hangs", self.attempt)

    def _fire(self, stalled: float) -> None:
        self.fired.set()
        stacks = dump_stacks()
        mine = {"rank": self.rank, "pid": os.getpid(), "node": self.node, "step": self.step, "phase": self.phase,
                "stalled_s": round(stalled, 1), "timeout_s": self.timeout_s(), "frame": _frame_of(self._ident),
                "stacks": storage.join(self._folder(), f"rank{self.rank}.txt")}
        log.error("hang: rank %d made no progress for %.0f s (last step %d, %s; timeout %.0f s), in %s; "
                  "every thread's stack:\n%s", self.rank, stalled, self.step, self.phase, mine["timeout_s"],
                  mine["frame"] or "?", stacks)
        try:
            storage.write_text(mine["stacks"], stacks)
            storage.write_json(storage.join(self._folder(), f"rank{self.rank}.json"), mine)
            reports = self._gather()
            if self.rank == min(reports):
                self._journal(reports)
        except Exception:  # the record is best effort: the group must fail whatever happens here
            log.exception("hang: could not write the hang record of rank %d", self.rank)
        finally:
            self.on_hang()

    def _gather(self) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + self.grace_s
        while True:
            reports = {}
            for entry in storage.list_files(self._folder(), suffix=".json"):
                with contextlib.suppress(ValueError, FileNotFoundError):
                    rep = json.loads(storage.read_text(entry.uri))
                    reports[int(rep["rank"])] = rep
            if len(reports) >= self.world or time.monotonic() > deadline:
                return reports
            time.sleep(min(0.5, self.grace_s / 4))

    def _journal(self, reports: Mapping[int, Mapping[str, Any]]) -> None:
        from cocoseg.tracking.journal import record_attempt

        stuck = stuck_ranks(reports, self.world)
        frames = {str(r): reports[r]["frame"] if r in reports else
                  "no answer: the process did not run its watchdog (stopped, frozen or gone)" for r in stuck}
        record_attempt(self.run_dir, "hang", {
            "attempt": self.attempt, "stuck_ranks": stuck, "frames": frames, "world": self.world,
            "steps": {str(r): rep["step"] for r, rep in reports.items()},
            "answered": sorted(reports), "timeout_s": self.timeout_s(), "stacks": self._folder()})
        log.error("hang: rank(s) %s stuck (%s); failing the worker group so Ray Train restarts it from the newest "
                  "complete checkpoint; stacks in %s", stuck, "; ".join(f"rank {r}: {f}" for r, f in frames.items()),
                  self._folder())
