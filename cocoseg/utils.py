"""Small helpers shared by every layer: logging, secret redaction, verbosity, git commit, timing.

This module imports nothing from cocoseg (layer L0).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["REDACTED", "RedactingFilter", "UserError", "get_logger", "git_commit", "redact", "restore_env", "secret_values",
           "set_verbose", "timed", "verbose"]


class UserError(Exception):
    """Bad input from a person (a file, a record, an argument).

    The CLI and the jobs print the message alone, without a traceback, so the message must name
    the file or record and say what is wrong and how to fix it. Areas subclass it
    (``IngestError``, ``CheckpointError``, ...).
    """

REDACTED = "***"
# Variable names whose values are secrets wherever they appear (AWS keys match *_KEY / *SECRET* /
# *TOKEN*; AWS_ACCESS_KEY_ID is named explicitly because it matches none of the patterns).
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|^AWS_ACCESS_KEY_ID$", re.IGNORECASE)
# Shorter values are not searched for: "1", "true" or "us-east-1" would blank unrelated text.
_MIN_SECRET_LEN = 6
# scheme://user:password@host -> scheme://user:***@host (also a token given as the user part alone
# is kept: a user name is not a secret, a password is).
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<pw>[^/@\s]+)@")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of the secret-named variables in ``environ`` (default: this process), longest first."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(found, key=len, reverse=True)


def redact(value: Any, extra: tuple[str, ...] = ()) -> Any:
    """``value`` with secrets replaced by ``***``: the password of any ``scheme://user:pw@`` URI,
    the values of secret-named environment variables (``*SECRET*``, ``*TOKEN*``, ``*PASSWORD*``,
    ``*_KEY``, ``AWS_ACCESS_KEY_ID``) and the strings in ``extra``.

    Strings are redacted; dicts, lists and tuples are copied with their strings redacted (keys
    too); anything else is returned as it is. This is the one redaction of the project: params,
    tags, config files, journals, model cards, log records and printed links all pass here.
    """
    secrets = [s for s in (*extra, *secret_values()) if s]
    return _redact(value, secrets)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        text = _URI_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, secrets) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Redacts every record passing a handler (message and arguments rendered first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def verbose() -> bool:
    """True when Ray's and pycocotools' own output should be shown (``COCOSEG_VERBOSE=1`` or
    ``--verbose``, which sets it)."""
    return os.environ.get("COCOSEG_VERBOSE", "").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """``--verbose``: set ``COCOSEG_VERBOSE`` so Ray processes this process starts inherit it."""
    if on:
        os.environ["COCOSEG_VERBOSE"] = "1"


_CONFIGURED = False


def get_logger(name: str) -> logging.Logger:
    """A logger writing ``time level name: message`` lines to stderr (configured once), with
    secrets redacted."""
    global _CONFIGURED
    if not _CONFIGURED:
        level = os.environ.get("COCOSEG_LOG_LEVEL", "INFO").upper()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler.addFilter(RedactingFilter())
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


def restore_env(saved: dict[str, str | None]) -> None:
    """Put ``os.environ`` back to ``saved`` (``{name: value}``, ``None``: unset) for those names."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
