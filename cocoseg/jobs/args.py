"""What every job's command line shares, whichever door it comes through.

- :class:`JobParser`: positionals may sit between options (``ingest SRC --config c.yaml DST``),
  as :meth:`argparse.ArgumentParser.parse_intermixed_args` allows;
- :func:`split_overrides`: dotted ``key=value`` overrides are taken from anywhere after the
  command, so they may come before, between or after options and positionals;
- :func:`add_common`: ``--config``, the overrides, ``--check`` and ``--verbose``;
- :class:`Renamed`: a spelling that was unified away fails with one line naming the new one;
- :func:`job_config`: the config every job resolves the same way (``--config`` found as
  :func:`cocoseg.config.config_path` finds it, then the overrides).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["OVERRIDE", "JobParser", "Renamed", "add_common", "job_config", "parse_job_args", "split_overrides"]

# A dotted override: section.key[.sub...]=value (a path or URI never matches: it has no "word.word=" head).
OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+=")


class JobParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that parses intermixed (options first, then the positionals left),
    so an optional positional still takes a token that comes after an option. A parser that holds
    sub-commands (``config show``) parses the usual way: argparse cannot intermix those."""

    _plain = False

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        if self._plain or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._plain = True  # parse_known_intermixed_args calls parse_known_args twice itself
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._plain = False


class Renamed(argparse.Action):
    """An option whose spelling was unified away: using it ends the parse with one line naming the
    new spelling and status 2 (argparse's status for a bad command line), never a silent alias."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=1, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.exit(2, f"{parser.prog}: error: {option_string} is no longer an option: pass {self.new}\n")


def add_common(parser: argparse.ArgumentParser, *, config: bool = True, example: str = "train.epochs=3") -> None:
    """``--config`` (unless ``config=False``), the dotted overrides, ``--check`` and ``--verbose``.

    ``--check`` and ``--verbose`` default to nothing at all (``SUPPRESS``): given to ``cocoseg``
    before the command, a job's default must not overwrite them."""
    if config:
        parser.add_argument("--config", default=None, help="job config YAML (e.g. pipelines/configs/train.yaml)")
    parser.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {example}")
    parser.add_argument("--check", action="store_true", default=argparse.SUPPRESS,
                        help="check the config, paths and inputs, then exit before starting anything (0: ok)")
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show Ray's and pycocotools' own output too (or COCOSEG_VERBOSE=1)")


def job_config(args: argparse.Namespace, first: Sequence[str] = (), then: Sequence[str] = ()) -> Any:
    """The job's :class:`~cocoseg.config.JobConfig`: ``--config``, then ``first`` (what the
    positionals set), the overrides and ``then``; a bad key is one line before torch or Ray load."""
    from cocoseg.config import config_path, load_config

    return load_config(config_path(args.config), [*first, *args.overrides, *then])


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in actions[:]:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                actions += _actions(child)
    return actions


def split_overrides(parser: argparse.ArgumentParser | None, argv: Sequence[str], start: int = 0) -> tuple[list[str], list[str]]:
    """``argv`` without the dotted ``key=value`` overrides found from ``argv[start]`` on, and those
    overrides in order. ``parser`` is the job's (``None``: no overrides taken).

    A token right after an option that takes a value stays that option's value (``--reason a.b=c``);
    nothing after ``--`` is taken, nor anything for a parser without overrides (argparse then
    reports the token it does not expect: ``predict`` may be given a file named ``a.b=c.jpg``).
    """
    actions = _actions(parser) if parser is not None else []
    if not any(a.dest == "overrides" for a in actions):
        return list(argv), []
    takes_value = {s: a.nargs != 0 for a in actions for s in a.option_strings}
    rest, found, skip = list(argv[:start]), [], False
    for i, token in enumerate(argv[start:], start=start):
        if token == "--":
            return rest + list(argv[i:]), found
        if skip:
            rest.append(token)
            skip = False
        elif OVERRIDE.match(token):
            found.append(token)
        else:
            rest.append(token)
            skip = token.startswith("-") and "=" not in token and takes_value.get(token, False)
    return rest, found


def parse_job_args(parser: argparse.ArgumentParser, argv: Sequence[str], start: int = 0,
                   command: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``parser.parse_args`` with the overrides taken from anywhere from ``argv[start]`` on into
    ``args.overrides`` (after any argparse placed there). ``command`` is the parser whose options
    the tokens belong to (default ``parser``)."""
    rest, overrides = split_overrides(command if command is not None else parser, argv, start)
    args = parser.parse_args(rest)
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args
