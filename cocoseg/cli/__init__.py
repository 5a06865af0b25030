"""The ``cocoseg`` console command: the jobs' other front door, plus the tools around them.

Every job (``ingest``, ``train``, ``tune``, ``evaluate``, ``infer``, ``export``, ``register``,
``retrain``, ``demo``) is declared once, in :mod:`cocoseg.jobs`; ``python -m pipelines.<job>`` and
``cocoseg <job>`` take the same arguments. The tools (``synth``, ``model-info``, ``import-weights``,
``predict``, ``sync-mlflow``, ``promote``, ``rollback``, ``config show``) are added by their area's
module here (``register(subparsers)``). This module only assembles them, gives every command's
``--help`` a closing example line (:data:`EXAMPLES`), accepts dotted ``key=value`` overrides
anywhere after the command (:func:`split_overrides`), and ends every command under the jobs' one
error policy (:func:`cocoseg.jobs.errors.run_guarded`: one line on stderr, exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import __version__, jobs
from cocoseg.jobs.args import JobParser, parse_job_args
from cocoseg.jobs.args import split_overrides as _split_job
from cocoseg.jobs.errors import run_guarded

from . import config as _config
from . import data as _data
from . import deploy as _deploy
from . import model as _model
from . import tracking as _tracking

__all__ = ["EXAMPLES", "build_parser", "main", "parse_args", "split_overrides"]

_TOOLS = (_data, _model, _tracking, _deploy, _config)

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=JobParser)
    for name in jobs.JOBS:
        job = jobs.job(name)
        jobs.add_arguments(name, sub.add_parser(name, help=job.HELP, description=job.DESCRIPTION))
    for area in _TOOLS:
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
    (in order), so that they may come before, between or after options and positionals
    (:func:`cocoseg.jobs.args.split_overrides` over the command's own options)."""
    at, command = _subcommand(parser, argv)
    return _split_job(command, argv, start=at + 1)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` with the dotted overrides taken from anywhere after the command
    (:func:`split_overrides`) into ``args.overrides``, after any given in the usual place."""
    at, command = _subcommand(parser, argv)
    return parse_job_args(parser, argv, start=at + 1, command=command) if command is not None else \
        parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_guarded(f"cocoseg {args.command}", args, args.func)


if __name__ == "__main__":
    sys.exit(main())
