"""The ``cocoseg`` console command: a thin layer over the functions the jobs use.

Each area adds its sub-commands in its own module (``register(subparsers)``); this module only
assembles them and turns input errors into one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import __version__
from cocoseg.config import ConfigError
from cocoseg.storage import StorageError
from cocoseg.utils import UserError, redact, set_verbose

from . import data as _data
from . import deploy as _deploy
from . import evaluate as _evaluate
from . import infer as _infer
from . import model as _model
from . import train as _train
from . import tune as _tune

__all__ = ["build_parser", "main"]

_AREAS = (_data, _model, _train, _tune, _deploy, _evaluate, _infer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocoseg",
        description="Train YOLOv8-seg models on COCO-Seg: ingest, train, evaluate, export, register.",
    )
    parser.add_argument("--version", action="version", version=f"cocoseg {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and pycocotools' own output too (or COCOSEG_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in _AREAS:
        area.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    set_verbose(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, StorageError, FileNotFoundError) as exc:
        print(redact(f"cocoseg {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cocoseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
