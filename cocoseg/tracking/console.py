"""The console a person reads during training: one line per epoch, printed by the driver.

The driver follows the run's metric journal (which rank 0 appends to after every epoch, or, with
asynchronous validation, when the epoch's validation arrives: lines may come out of epoch order) rather
than the workers' output, so the line has no Ray prefix, appears once however many workers run,
and needs no Ray log forwarding (which also carries Ray's own chatter)::

    epoch  3/12  loss 4.213 (box 1.102 cls 1.520 dfl 0.980 mask 0.611)  lr 0.00200  182 img/s
      box AP 0.123 AP50 0.301  mask AP 0.101 AP50 0.288  12.3 s  ETA 1m51s
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["EpochPrinter", "epoch_line", "format_duration"]

_LOSS_TERMS = ("box", "cls", "dfl", "mask")


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; under a minute ``42s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def epoch_line(epoch: int, epochs: int, metrics: Mapping[str, float], eta_s: float | None = None,
               validation_error: str = "") -> str:
    """One line for ``epoch`` (0-based; printed 1-based) of ``epochs`` from its metrics dict.

    Keys read: ``train/loss`` and ``train/loss_{box,cls,dfl,mask}``, ``lr/*`` (the first group),
    ``train/images_per_s``, ``val/{box,mask}_{ap50_95,ap50}`` (left out on epochs without
    validation), ``train/epoch_time_s`` + ``val/time_s`` (validation that held training up;
    asynchronous validation's own time is ``val/task_s``, not counted). ``eta_s``: seconds left,
    if known. ``validation_error``: the epoch's validation failed, and why.
    """
    width = len(str(epochs))
    parts = [f"epoch {epoch + 1:>{width}}/{epochs}"]
    if "train/loss" in metrics:
        terms = " ".join(f"{t} {metrics[f'train/loss_{t}']:.3f}" for t in _LOSS_TERMS if f"train/loss_{t}" in metrics)
        parts.append(f"loss {metrics['train/loss']:.3f}" + (f" ({terms})" if terms else ""))
    lrs = [v for k, v in sorted(metrics.items()) if k.startswith("lr/")]
    if lrs:
        parts.append(f"lr {max(lrs):.5f}")
    if "train/images_per_s" in metrics:
        parts.append(f"{metrics['train/images_per_s']:.0f} img/s")
    for kind in ("box", "mask"):
        if f"val/{kind}_ap50_95" in metrics:
            parts.append(f"{kind} AP {metrics[f'val/{kind}_ap50_95']:.3f} AP50 {metrics.get(f'val/{kind}_ap50', 0.0):.3f}")
    if validation_error:
        parts.append(f"validation FAILED ({validation_error})")
    seconds = metrics.get("train/epoch_time_s", 0.0) + metrics.get("val/time_s", 0.0)
    if seconds:
        parts.append(f"{seconds:.1f} s")
    if eta_s is not None and epoch + 1 < epochs:
        parts.append(f"ETA {format_duration(eta_s)}")
    return "  ".join(parts)


class EpochPrinter:
    """Prints :func:`epoch_line` for each new journal record while training runs (a daemon thread).

    ``read_records()`` returns the journal's records (``{"step", "timestamp", "metrics"}``);
    epochs already in it when the printer starts (a resume) are not printed again. ETA: the
    mean wall time per epoch trained since the start, times the epochs left.
    """

    def __init__(self, read_records: Callable[[], list[dict[str, Any]]], epochs: int, *, interval_s: float = 1.0,
                 out=None):
        self.read_records = read_records
        self.epochs = epochs
        self.interval_s = interval_s
        self.out = out or sys.stdout
        self._seen = {r["step"] for r in self._read()}
        self._started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cocoseg-epoch-printer", daemon=True)
        self.printed: list[str] = []

    def _read(self) -> list[dict[str, Any]]:
        try:
            return self.read_records()
        except Exception:  # a journal mid-write (or S3 hiccup): try again next tick
            return []

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        fresh = sorted((r for r in self._read() if r["step"] not in self._seen), key=lambda r: r["step"])
        for r in fresh:
            self._seen.add(r["step"])
            per_epoch = (time.time() - self._started) / (len(self.printed) + 1)
            line = epoch_line(int(r["step"]), self.epochs, r["metrics"], per_epoch * (self.epochs - r["step"] - 1),
                              r.get("validation_error", ""))
            self.printed.append(line)
            print(line, file=self.out, flush=True)

    def __enter__(self) -> EpochPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # the last epoch, journaled just before fit() returned
