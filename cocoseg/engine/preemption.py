"""Just-in-time checkpoints on preemption notices (spot GPUs). No Ray here: ``worker.py`` hands in
Ray Train's notice (``ray.train.get_preemption_info``) and its checkpoint writer.

Ray Train 2.60 watches the drain state of the nodes that hold the workers (its
``PreemptionWatcher``, every ``RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S``, 5 s by default) and marks
the workers of a group whose node is being drained for preemption (a spot reclaim announced by
the cloud, delivered to Ray as ``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``); at the
drain's deadline it tears the group down and restarts it from the latest checkpoint
(``FailureConfig.max_preemption_failures``, counted apart from ``max_failures``).

:class:`PreemptionPoller` is called after every micro-batch. At an attempt's first optimiser step
and then every ``every``-th (right after the step, so no gradient is half accumulated) it asks for
the notice (a node drained while the group was restarting is seen at once); the question is
a barrier across the workers (all ranks ask at the same steps: the optimiser steps fall on the
same micro-batches everywhere), so it is kept off the other steps. Once a notice came, every poll
writes a checkpoint (``save``: the worker's ``save_mid_epoch``, with the commit marker last) and
training goes on until the node goes: the run loses at most ``every`` optimiser steps, whatever
the deadline. After the notice the poller also journals each optimiser step (``progress``), so
the steps a reclaim cost can be counted from the journal (:func:`steps_lost`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cocoseg.engine.loop import LoopState

__all__ = ["PreemptionPoller", "notice_fields", "steps_lost"]

Note = Callable[[str, dict[str, Any]], None]  # (kind, fields) -> journaled (rank 0) or dropped


def notice_fields(info: Any) -> dict[str, Any]:
    """The journal's view of a ``ray.train.PreemptionInfo`` (or anything with its attributes)."""
    return {"deadline_ms": getattr(info, "deadline_ms", None),
            "ranks": list(getattr(info, "preempted_ranks", []) or []),
            "nodes": list(getattr(info, "preempted_node_ids", []) or [])}


class PreemptionPoller:
    """``on_step`` hook: poll ``poll()`` every ``every`` optimiser steps; on a notice, ``save(state)``.

    ``poll`` returns None or a notice; ``note(kind, fields)`` journals (``preemption``,
    ``jit_checkpoint``, ``progress``). ``every`` <= 0 turns polling off.
    """

    def __init__(self, *, every: int, poll: Callable[[], Any], save: Callable[[LoopState], None],
                 note: Note | None = None, clock: Callable[[], float] = time.time):
        self.every, self.poll, self.save = int(every), poll, save
        self.note = note or (lambda kind, fields: None)
        self.clock = clock
        self.steps = 0  # optimiser steps this attempt has taken
        self.polls = 0
        self.notice: Any = None
        self.saved_micro_step = -1

    def __call__(self, state: LoopState) -> bool:
        """After a micro-batch; True when it wrote a checkpoint."""
        if self.every <= 0 or state.last_step_at != state.micro_step - 1:  # not right after an optimiser step
            return False
        self.steps += 1
        if self.notice is not None:
            self.note("progress", {"ni": state.micro_step, "epoch": state.epoch, "epoch_rows": state.epoch_rows})
        if (self.steps - 1) % self.every:  # the 1st step of an attempt, then every `every`-th
            return False
        self.polls += 1
        info = self.poll()
        if info is None:
            return False
        if self.notice is None:
            self.notice = info
            self.note("preemption", {"ni": state.micro_step, "epoch": state.epoch, **notice_fields(info),
                                     "seen_at": self.clock()})
        self.save(state)
        self.saved_micro_step = state.micro_step
        self.note("jit_checkpoint", {"ni": state.micro_step, "epoch": state.epoch, "epoch_rows": state.epoch_rows})
        return True


def steps_lost(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """Optimiser steps each preempted attempt trained that the next attempt did not keep.

    ``records``: the attempt journal in order (``start`` records carry the ``ni`` an attempt
    resumed at: its ``micro_step``). For each attempt that saw a notice: its ``progress`` records (one per optimiser
    step after the notice) with ``ni`` above the next attempt's start ``ni``.
    """
    out: list[int] = []
    attempts: list[list[Mapping[str, Any]]] = []
    for r in records:
        if r.get("kind") == "start" or not attempts:
            attempts.append([])
        attempts[-1].append(r)
    for this, after in zip(attempts, attempts[1:], strict=False):
        if not any(r.get("kind") == "preemption" for r in this):
            continue
        resumed = int(after[0].get("ni", 0)) if after and after[0].get("kind") == "start" else 0
        out.append(sum(1 for r in this if r.get("kind") == "progress" and int(r["ni"]) > resumed))
    return out
