"""Each job is declared once (cocoseg/jobs/<job>.py) and both front doors use that declaration:
``python -m pipelines.<job>`` and ``cocoseg <job>`` build the same parser, parse the same command
line into the same arguments and end under the one error policy (cocoseg/jobs/errors.py). Parsers
and the policy only: no Ray, no training."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

import pytest

from cocoseg import config_checks, jobs
from cocoseg.cli import build_parser, parse_args
from cocoseg.cli import main as cli_main
from cocoseg.config import ConfigError
from cocoseg.config_checks import CheckOnly
from cocoseg.engine.checks import TrainInputError
from cocoseg.jobs.args import parse_job_args
from cocoseg.jobs.errors import run_guarded
from cocoseg.storage import StorageError
from cocoseg.utils import UserError


def _cli_command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _signature(parser: argparse.ArgumentParser) -> list[tuple]:
    """What a parser accepts: every action but --help, with everything that changes parsing."""
    return sorted((tuple(a.option_strings), a.dest, str(a.nargs), a.required, repr(a.default), repr(a.type),
                   repr(a.choices), type(a).__name__, repr(getattr(a, "new", None)))
                  for a in parser._actions if not isinstance(a, argparse._HelpAction))


def test_every_pipeline_is_a_job_and_every_job_a_pipeline() -> None:
    from pathlib import Path

    pipelines = {p.stem for p in (Path(__file__).resolve().parents[1] / "pipelines").glob("*.py")} - {"__init__"}
    assert pipelines == set(jobs.JOBS)


@pytest.mark.parametrize("name", jobs.JOBS)
def test_both_doors_build_the_same_parser(name: str) -> None:
    door = importlib.import_module(f"pipelines.{name}").build_parser()
    assert door.prog == f"python -m pipelines.{name}"
    assert _signature(door) == _signature(_cli_command(name))
    assert {"--check", "--verbose"} <= {s for a in door._actions for s in a.option_strings}


# One command line per job (overrides among the options and positionals), parsed by each door.
SAMPLES = {
    "ingest": ["src", "train.epochs=1", "--config", "c.yaml", "dst"],
    "train": ["--config", "c.yaml", "train.epochs=2", "--parent-run-id", "abc", "model.variant=s"],
    "tune": ["tune.num_trials=3", "--config", "c.yaml"],
    "evaluate": ["w", "evaluate.batch_size=4", "s", "--split", "val", "--no-mlflow", "--out", "o"],
    "infer": ["w", "src", "--out", "dest", "evaluate.chunk_images=8", "--split", "val"],
    "export": ["w", "--out", "o", "--formats", "onnx,engine", "export.opset=18"],
    "register": ["e", "--name", "m", "registry.promotion_margin=0.01", "--snapshot", "s"],
    "retrain": ["--config", "c.yaml", "retrain.force=true", "--check"],
    "demo": ["--root", "r", "train.epochs=2", "--images", "8", "--verbose"],
}


@pytest.mark.parametrize("name", jobs.JOBS)
def test_both_doors_parse_a_command_line_the_same(name: str) -> None:
    argv = SAMPLES[name]
    door = vars(parse_job_args(importlib.import_module(f"pipelines.{name}").build_parser(), argv))
    cli = vars(parse_args(build_parser(), [name, *argv]))
    assert cli.pop("command") == name
    cli.pop("check"), cli.pop("verbose")  # cocoseg's own (before the command); the job's are in both
    for given in ("--check", "--verbose"):
        if given in argv:
            assert door[given[2:]] is True
    door.pop("check", None), door.pop("verbose", None)
    assert door == cli
    assert door["overrides"] == [t for t in argv if "=" in t and "." in t.split("=")[0]]


@pytest.mark.parametrize("name, argv, new", [
    ("evaluate", ["--weights", "w", "s"], "WEIGHTS"),
    ("evaluate", ["w", "--snapshot", "s"], "SNAPSHOT"),
    ("infer", ["--weights", "w", "src", "--out", "o"], "WEIGHTS"),
    ("infer", ["w", "--source", "src", "--out", "o"], "SOURCE"),
    ("export", ["--weights", "w", "--out", "o"], "WEIGHTS"),
    ("register", ["--export", "e"], "EXPORT_DIR"),
])
def test_an_old_spelling_fails_in_one_line_naming_the_new(name, argv, new, capsys) -> None:
    old = next(t for t in argv if t.startswith("--") and t != "--out")
    for prog, run in ((f"python -m pipelines.{name}", importlib.import_module(f"pipelines.{name}").main),
                      (f"cocoseg {name}", lambda a: cli_main([name, *a]))):
        with pytest.raises(SystemExit) as exit_:
            run(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f"{prog}: error: {old} is no longer an option: pass {new} "), err


@pytest.mark.parametrize("exc", [UserError("bad weights"), TrainInputError("train.snapshot: none"),
                                 ConfigError("unknown config key 'train.epochz'"), StorageError("s3://b/k: denied"),
                                 FileNotFoundError("/x does not exist"), ValueError("/x: malformed JSON at line 1")])
def test_the_policy_ends_an_input_error_in_one_line_and_status_2(exc, capsys) -> None:
    def run(args):
        assert config_checks._CHECK_ONLY
        raise exc

    assert run_guarded("cocoseg job", argparse.Namespace(check=True), run) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"cocoseg job: error: {exc}"]
    assert not config_checks._CHECK_ONLY  # reset for later in-process calls


def test_a_control_character_in_a_value_stays_inside_the_one_line(capsys) -> None:
    # found by the fuzzer (ingest.source="\r"): the value is echoed, escaped, not obeyed
    def run(args):
        raise UserError("no files under /data/\r: check the source path\nor \x1b[31mthis")

    assert run_guarded("cocoseg ingest", argparse.Namespace(), run) == 2
    assert capsys.readouterr().err == (
        "cocoseg ingest: error: no files under /data/\\r: check the source path\\nor \\x1b[31mthis\n")


def test_the_policy_for_check_interrupt_and_a_bug(capsys) -> None:
    def raising(exc):
        def run(args):
            raise exc
        return run

    assert run_guarded("p", argparse.Namespace(), raising(CheckOnly("config ok; nothing was started"))) == 0
    assert capsys.readouterr() == ("p: config ok; nothing was started\n", "")
    assert run_guarded("p", argparse.Namespace(), raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "p: interrupted\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_guarded("p", argparse.Namespace(), raising(ZeroDivisionError("x")))
    assert run_guarded("p", argparse.Namespace(), lambda args: None) == 0


@pytest.mark.parametrize("name", ["train", "tune", "retrain", "ingest"])
def test_a_bad_key_ends_both_doors_with_the_same_line(name, capsys) -> None:
    """Through the real entrypoints: the config is resolved before anything heavy starts."""
    lines = []
    for prog, run in ((f"python -m pipelines.{name}", importlib.import_module(f"pipelines.{name}").main),
                      (f"cocoseg {name}", lambda a: cli_main([name, *a]))):
        assert run(["train.epochz=3"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"{prog}: error: unknown config key 'train.epochz'"), err
        lines.append(err[0].removeprefix(prog))
    assert lines[0] == lines[1]


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_both_doors_set_a_passive_openmp_wait_before_torch_unless_the_user_chose(given, expected) -> None:
    # in a fresh process (this one imported torch long ago): the front doors' package sets it before
    # any torch import, and what the process starts (its private Ray) inherits it
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = ("import os, sys; import cocoseg.jobs; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [expected, "False"]
