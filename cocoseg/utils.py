"""Small helpers shared by every layer: logging, git commit, timing.

This module imports nothing from cocoseg (layer L0).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["UserError", "get_logger", "git_commit", "timed"]


class UserError(Exception):
    """Bad input from a person (a file, a record, an argument).

    The CLI and the jobs print the message alone, without a traceback, so the message must name
    the file or record and say what is wrong and how to fix it. Areas subclass it
    (``IngestError``, ``CheckpointError``, ...).
    """

_CONFIGURED = False


def get_logger(name: str) -> logging.Logger:
    """A logger writing ``time level name: message`` lines to stderr (configured once)."""
    global _CONFIGURED
    if not _CONFIGURED:
        level = os.environ.get("COCOSEG_LOG_LEVEL", "INFO").upper()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root = logging.getLogger("cocoseg")
        root.addHandler(handler)
        root.setLevel(level)
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("cocoseg") else f"cocoseg.{name}")


def git_commit(path: str | None = None) -> str:
    """The git commit of the working tree at ``path`` (or of this package), or "unknown"."""
    where = path or os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: ...`` then ``t["s"]`` holds the elapsed seconds."""
    box = {"s": 0.0}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - start
