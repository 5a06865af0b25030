"""The ``cocoseg`` console command: a thin layer over the functions the jobs use.

Each area adds its sub-commands in its own module (``register(subparsers)``); this module only
assembles them, gives every command's ``--help`` a closing example line (:data:`EXAMPLES`), accepts
dotted ``key=value`` overrides anywhere after the command (:func:`split_overrides`), and turns input
errors into one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from cocoseg import __version__
from cocoseg.config import ConfigError
from cocoseg.config_checks import CheckOnly, set_check_only
from cocoseg.storage import StorageError
from cocoseg.utils import UserError, redact, set_verbose

from . import config as _config
from . import data as _data
from . import deploy as _deploy
from . import evaluate as _evaluate
from . import infer as _infer
from . import jobs as _jobs
from . import model as _model
from . import train as _train
from . import tune as _tune

__all__ = ["EXAMPLES", "build_parser", "main", "parse_args", "split_overrides"]

_AREAS = (_data, _model, _train, _tune, _deploy, _evaluate, _infer, _jobs, _config)

# The last line of each command's --help (tests/test_cli_forgiving.py checks every command has one).
EXAMPLES = {
    "synth": "cocoseg synth /tmp/shapes --images 200 --size 160x128",
    "ingest": "cocoseg ingest ../shared/data/coco8-seg .cocoseg ingest.shard_bytes=1000000",
    "model-info": "cocoseg model-info s --imgsz 640",
    "import-weights": "cocoseg import-weights yolov8n-seg.pt ./weights/yolov8n-seg",
    "predict": "cocoseg predict .cocoseg/runs/<run>/weights/best images/ --out preds/ --conf 0.3",
    "train": "cocoseg train --config pipelines/configs/train.yaml train.snapshot=latest train.epochs=3",
    "sync-mlflow": "cocoseg sync-mlflow .cocoseg/runs/<run> --tracking-uri http://127.0.0.1:5000",
    "tune": "cocoseg tune --config pipelines/configs/tune.yaml train.snapshot=latest tune.num_trials=8",
    "export": "cocoseg export .cocoseg/runs/<run>/weights/best --out .cocoseg/exports/<run>",
    "register": "cocoseg register .cocoseg/exports/<run> --name cocoseg-yolov8-seg",
    "promote": "cocoseg promote cocoseg-yolov8-seg 3 --reason 'better on the new val set'",
    "rollback": "cocoseg rollback cocoseg-yolov8-seg",
    "evaluate": "cocoseg evaluate .cocoseg/runs/<run>/weights/best .cocoseg/snapshots/<id> --split val",
    "infer": "cocoseg infer models:/cocoseg-yolov8-seg@champion s3://bucket/images --out s3://bucket/preds",
    "retrain": "cocoseg retrain --config pipelines/configs/retrain.yaml ingest.source=s3://data/coco",
    "demo": "cocoseg demo --root /tmp/cocoseg-demo train.epochs=2",
    "config": "cocoseg config show --config pipelines/configs/train.yaml train.epochs=3 --section train",
}

# A dotted override: section.key[.sub...]=value (a path or URI never matches: it has no "word.word=" head).
_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+=")


class _ExampleLast(argparse.HelpFormatter):
    """Keeps the closing ``example:`` line whole (unwrapped), whatever the command's formatter."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example: "):
            return indent + text
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocoseg",
        description="Train YOLOv8-seg models on COCO-Seg: ingest, train, evaluate, export, register.",
        epilog="example: cocoseg train --config pipelines/configs/train.yaml train.snapshot=latest train.epochs=3",
        formatter_class=_ExampleLast,
    )
    parser.add_argument("--version", action="version", version=f"cocoseg {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and pycocotools' own output too (or COCOSEG_VERBOSE=1)")
    parser.add_argument("--check", action="store_true",
                        help="check the job's config, paths and inputs, then exit before starting anything (0: ok)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in _AREAS:
        area.register(sub)
    for name, command in sub.choices.items():
        _add_example(command, EXAMPLES[name])
    return parser


def _add_example(command: argparse.ArgumentParser, example: str) -> None:
    command.epilog = f"example: {example}"
    command.formatter_class = type("ExampleLast", (_ExampleLast, command.formatter_class), {})
    for action in command._subparsers._group_actions if command._subparsers else ():  # `config show`
        for child in action.choices.values():
            _add_example(child, example)


def _subcommand(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[int, argparse.ArgumentParser | None]:
    """Index of the command word in ``argv`` and its parser (-1, None: no command)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for i, token in enumerate(argv):
        if token in sub.choices:
            return i, sub.choices[token]
        if not token.startswith("-"):
            break
    return -1, None


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` without the dotted ``key=value`` overrides found after the command, and those overrides
    (in order), so that they may come before, between or after options and positionals.

    A token right after an option that takes a value stays that option's value (``--reason a.b=c``);
    nothing after ``--`` is taken, nor anything from a command without overrides (argparse then
    reports the token it does not expect).
    """
    at, command = _subcommand(parser, argv)
    actions = _all_actions(command) if command is not None else []
    if not any(a.dest == "overrides" for a in actions):  # e.g. predict: a file may be named a.b=c.jpg
        return list(argv), []
    takes_value = {s: a.nargs != 0 for a in actions for s in a.option_strings}
    rest, found, skip = list(argv[: at + 1]), [], False
    for i, token in enumerate(argv[at + 1:], start=at + 1):
        if token == "--":
            return rest + list(argv[i:]), found
        if skip:
            rest.append(token)
            skip = False
        elif _OVERRIDE.match(token):
            found.append(token)
        else:
            rest.append(token)
            skip = token.startswith("-") and "=" not in token and takes_value.get(token, False)
    return rest, found


def _all_actions(command: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(command._actions)
    for action in actions[:]:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                actions += _all_actions(child)
    return actions


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` with the dotted overrides taken from anywhere after the command
    (:func:`split_overrides`) into ``args.overrides``, after any given in the usual place."""
    rest, overrides = split_overrides(parser, argv)
    args = parser.parse_args(rest)
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, list(sys.argv[1:] if argv is None else argv))
    set_verbose(args.verbose)
    set_check_only(getattr(args, "check", False))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CheckOnly as done:
        print(redact(f"cocoseg {args.command}: {done}"))
        return 0
    except (ConfigError, UserError, StorageError, FileNotFoundError) as exc:
        print(redact(f"cocoseg {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cocoseg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        set_check_only(False)  # process-wide: a later in-process call (tests, notebooks) must run for real


if __name__ == "__main__":
    sys.exit(main())
