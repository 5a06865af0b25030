"""The one error policy of both front doors (``python -m pipelines.<job>`` and ``cocoseg <job>``).

Bad input ends a job with one line on stderr, ``<prog>: error: <message>``, and exit status 2;
every error type below carries a message that names the file, key or argument and the fix. An
interrupt is ``<prog>: interrupted`` and 130 (the shell's convention for SIGINT). ``--check``
ending a job before anything started is not an error: its line goes to stdout with status 0.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cocoseg.config import ConfigError
from cocoseg.config_checks import CheckOnly, set_check_only
from cocoseg.storage import StorageError
from cocoseg.utils import UserError, redact, set_verbose

__all__ = ["INPUT_ERRORS", "outcome", "run_guarded"]

# Input errors: UserError covers the library's own (TrainInputError, ModelError, CheckpointError,
# IngestError, SnapshotError, RegistryError, ExportError, BundleError, ImageReadError, ...);
# ConfigError and StorageError are their modules' (config and storage sit below utils' users);
# FileNotFoundError and ValueError are what the storage layer and the JSON/YAML readers raise for a
# missing or malformed file, with the path in the message.
INPUT_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, StorageError, FileNotFoundError, ValueError)


def outcome(prog: str, exc: BaseException) -> tuple[str, int, bool] | None:
    """``(line, exit status, to stderr)`` for ``exc`` ended a job run as ``prog``; ``None``: not
    an input error (the caller re-raises it)."""
    if isinstance(exc, CheckOnly):
        return _one_line(redact(f"{prog}: {exc}")), 0, False
    if isinstance(exc, KeyboardInterrupt):
        return f"{prog}: interrupted", 130, True
    if isinstance(exc, INPUT_ERRORS):
        return _one_line(redact(f"{prog}: error: {exc}")), 2, True
    return None


def _one_line(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\r``, ``\\n``, ``\\x1b``): a value a
    person typed (``ingest.source="\\r"``) or a library's multi-line message stays one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def run_guarded(prog: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], int | None]) -> int:
    """``run(args)`` under the policy: ``--verbose`` and ``--check`` set for the run (``--check``
    reset after it: it is process-wide and a later in-process call must run for real)."""
    set_verbose(bool(getattr(args, "verbose", False)))
    set_check_only(bool(getattr(args, "check", False)))
    try:
        return int(run(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        result = outcome(prog, exc)
        if result is None:
            raise
        line, status, to_stderr = result
        print(line, file=sys.stderr if to_stderr else sys.stdout, flush=True)
        return status
    finally:
        set_check_only(False)
