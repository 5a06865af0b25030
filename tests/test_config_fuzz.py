"""A fuzzed config space (issue 27): for every job, Hypothesis draws values for the keys of the
sections that job reads (wrong types, out of range, empty, negative, huge, NaN, relative and
missing paths, conflicting pairs) and runs ``cocoseg --check JOB ...`` in-process through the
CLI's own ``main``. The job must either pass its checks (exit 0, "config ok": it would start)
or exit 2 with exactly one line on stderr naming a key, never a traceback, and without starting
Ray. ``make test`` draws 30 examples per job; the ``extended`` twins (``make test-all``) 300.
A few real-CLI subprocess cases check the same through the console command, with RAY_ADDRESS
pointing at nothing: a job that tried to start Ray would fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cocoseg.config import JobConfig  # noqa: E402
from cocoseg.config_checks import JOB_SECTIONS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COCO8 = REPO / "tests" / "fixtures" / "coco8-seg"
EXAMPLES, EXTENDED_EXAMPLES = 30, 300
# An error line names a key (section.key), a positional argument, or the override's form.
NAMES_A_KEY = re.compile(r"\b(storage|model|train|scaling|data|tracking|tune|evaluate|export|ingest|registry)\.\w+"
                         r"|\b(WEIGHTS|SNAPSHOT|SOURCE|--split|--out)\b|override")


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> dict[str, str]:
    """A real snapshot of coco8-seg (written by the ingest job's own writer functions, in this
    process: no Ray) and a real checkpoint (n, 80 classes)."""
    from cocoseg.ingest.snapshot import (
        SnapshotWriter,
        compute_snapshot_id,
        plan_shards,
        sort_records,
        write_shard,
    )
    from cocoseg.ingest.source import plan_source
    from cocoseg.model import ModelCard, build_model, save_checkpoint

    root = tmp_path_factory.mktemp("edge")
    plan = plan_source(str(COCO8), "auto", ())
    settings_ = {"shard_bytes": 1 << 20, "box_tolerance_px": 2.0, "decode_check": "header",
                 "splits": [s.name for s in plan.splits]}
    writer = SnapshotWriter(str(root), compute_snapshot_id(plan, settings_), plan, 1 << 20, settings_)
    for spec in plan_shards(sort_records(plan), 1 << 20):
        writer.add_shard(write_shard(spec, writer.uri, plan.class_map.id_to_index))
    snapshot = writer.commit().snapshot_uri
    weights = root / "weights"
    save_checkpoint(str(weights), build_model("n", 80).eval(), ModelCard(variant="n", num_classes=80, imgsz=640,
                                                                   class_names=[str(i) for i in range(80)]))
    return {"root": str(root), "snapshot": snapshot, "weights": str(weights), "images": str(COCO8 / "images" / "val")}


# --------------------------------------------------------------------------------------------
# Values


_ODD = [None, "", "abc", -1, 0, 1, 2, 3, -7, 10**12, -(10**12), 2**70, 0.5, -0.5, 1e308, float("nan"), float("inf"),
        [], [1, "x"], {}, {"a": 1}, True, False, "rel/dir", "/does/not/exist", "~/nowhere", "1e3", "0x10"]


def _values(annotation, default) -> st.SearchStrategy:
    odd = st.sampled_from(_ODD)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        typed = st.booleans()
    elif annotation is int:
        typed = st.one_of(st.integers(-3, 40), st.sampled_from([64, 320, 640, 1000, 4097, 2**31, 2**63]))
    elif annotation is float:
        typed = st.one_of(st.floats(-2, 50, allow_nan=False), st.sampled_from([0.0, 1e-9, 1e9]))
    elif annotation is str:
        typed = st.one_of(st.sampled_from(["", " ", "rel/dir", "/does/not/exist", "latest", "auto", "n", "s",
                                           "SGD", "val", "yolov8", "torchscript", "dynamo", "PACK"]),
                          st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6))
    elif origin is tuple:
        typed = st.lists(st.sampled_from(["onnx", "engine", "train", "val", "x", ""]), max_size=3)
    elif origin is dict or annotation is dict:
        typed = st.sampled_from([{}, {"train.lr0": {"loguniform": [0.001, 0.01]}},
                                 {"train.lr0": {"uniform": [0.1, 0.01]}}, {"train.epochs": {"choice": [1, 2]}},
                                 {"model.variant": {"choice": ["n", "q"]}}, {"train": {"lr0": {"randint": [1, 3]}}},
                                 {"nokey": {"choice": [1]}}, {"train.lr0": {"normal": [0, 1]}}])
    else:
        typed = st.just(default)
    return st.one_of(st.just(default), typed, typed, odd)


def _keys(job: str) -> dict[str, st.SearchStrategy]:
    cfg = JobConfig()
    out = {}
    for section in JOB_SECTIONS[job]:
        node = getattr(cfg, section)
        hints = typing.get_type_hints(type(node))
        for f in dataclasses.fields(node):
            out[f"{section}.{f.name}"] = _values(hints[f.name], getattr(node, f.name))
    return out


def _dump(value) -> str:
    """What a person would type after ``key=`` for this value (YAML flow, one line)."""
    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and value in (float("inf"), -float("inf")):
        return ".inf" if value > 0 else "-.inf"
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


@st.composite
def overrides(draw, job: str) -> list[str]:
    """1..6 keys of the job's sections with drawn values, plus, half the time, a conflicting pair."""
    keys = _keys(job)
    chosen = draw(st.lists(st.sampled_from(sorted(keys)), min_size=1, max_size=6, unique=True))
    items = [f"{k}={_dump(draw(keys[k]))}" for k in chosen]
    pairs = {"train": [("train.close_mosaic", "train.epochs"), ("data.max_train_images", "scaling.num_workers"),
                       ("train.warmup_epochs", "train.epochs"), ("train.batch_size", "train.nominal_batch")],
             "tune": [("tune.grace_period", "tune.epochs"), ("tune.max_concurrent_trials", "tune.num_trials")],
             "export": [("export.imgsz", "export.max_hw"), ("export.exporter", "export.nms")],
             "evaluate": [("evaluate.threads_per_actor", "evaluate.cpus_per_actor")],
             "infer": [("evaluate.actors", "evaluate.cpus_per_actor")], "ingest": [("ingest.layout", "ingest.splits")]}
    if draw(st.booleans()):
        a, b = draw(st.sampled_from(pairs[job]))
        items += [f"{a}={draw(st.integers(0, 6))}", f"{b}={draw(st.integers(0, 6))}"]
    return items


def _argv(job: str, edge: dict[str, str], out: str, extra: list[str]) -> list[str]:
    base = {
        "train": ["train", f"storage.root={edge['root']}", f"train.snapshot={edge['snapshot']}"],
        "tune": ["tune", f"storage.root={edge['root']}", f"train.snapshot={edge['snapshot']}", "train.optimizer=SGD",
                 "tune.space={train.lr0: {loguniform: [0.001, 0.01]}}", "tune.epochs=3"],
        # (options last: argparse takes no positional after an option, and infer's --out takes the rest)
        "evaluate": ["evaluate", edge["weights"], edge["snapshot"], f"storage.root={edge['root']}"],
        "infer": ["infer", edge["weights"], edge["images"], f"storage.root={edge['root']}"],
        "ingest": ["ingest", str(COCO8), out],
        "export": ["export", edge["weights"]],
    }[job]
    tail = {"evaluate": ["--out", out, "--no-mlflow"], "infer": ["--out", out], "export": ["--out", out]}.get(job, [])
    return ["--check", *base, *extra, *tail]


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """``cocoseg.cli.main(argv)`` with its stdout and stderr captured; SystemExit is argparse's."""
    from cocoseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse refused the command line: usage + one error line
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def check_outcome(job: str, argv: list[str], rc: int, stdout: str, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    if rc == 0:
        assert "config ok" in stdout or "nothing to do" in stdout, (argv, stdout, stderr)
        return
    assert rc == 2, (argv, rc, stderr)
    assert len(lines) == 1, (argv, stderr)
    assert lines[0].startswith(f"cocoseg {job}: error: "), (argv, lines)
    assert NAMES_A_KEY.search(lines[0]), (argv, lines)
    assert "Traceback" not in stderr


def _fuzz(job: str, examples: int, edge: dict[str, str], tmp: Path) -> None:
    import ray

    from cocoseg import config_checks

    started = ray.is_initialized()
    here = os.getcwd()
    os.chdir(tmp)  # relative paths drawn land in the test's folder

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(extra=overrides(job))
    def one(extra: list[str]) -> None:
        argv = _argv(job, edge, str(tmp / "out"), extra)
        rc, stdout, stderr = run_in_process(argv)
        check_outcome(job, argv, rc, stdout, stderr)
        assert ray.is_initialized() == started, f"{argv} started Ray"
        assert not config_checks._CHECK_ONLY, f"{argv}: --check stayed on for later in-process calls"

    try:
        one()
    finally:
        os.chdir(here)


JOBS = sorted(JOB_SECTIONS)


@pytest.mark.parametrize("job", JOBS)
def test_fuzzed_config_starts_or_fails_in_one_line(job, edge, tmp_path):
    _fuzz(job, EXAMPLES, edge, tmp_path)


@pytest.mark.extended  # the same property, 10x the examples (make test-all)
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("job", JOBS)
def test_fuzzed_config_extended(job, edge, tmp_path):
    _fuzz(job, EXTENDED_EXAMPLES, edge, tmp_path)


# --------------------------------------------------------------------------------------------
# The real console command: a few cases, RAY_ADDRESS pointing at nothing (a job that tried to
# reach Ray would fail), within seconds.


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "cocoseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cocoseg"]
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


_SLOW = pytest.mark.extended  # each case is a CLI start (~5 s of CPU: torch, Ray, MLflow imports)


@pytest.mark.parametrize("job, extra, ok, message", [
    ("train", [], True, "cocoseg train: config ok"),
    pytest.param("tune", ["tune.grace_period=5"], False, "tune.grace_period=5 is more than the epochs each trial trains",
                 marks=_SLOW),  # (test_tune.py::test_issue_case1_... runs the same through the CLI in make test)
    pytest.param("train", ["train.lr0=-1"], False, "train.lr0: must be in (0, 10]", marks=_SLOW),
    pytest.param("evaluate", ["evaluate.threads_per_actor=[1]"], False,
                 "evaluate.threads_per_actor: expected an integer", marks=_SLOW),
    pytest.param("export", ["export.exporter=dynamo", "export.nms=true"], False,
                 "export.nms=true with export.exporter=dynamo", marks=_SLOW),
])
def test_real_cli_checks_without_starting_ray(job, extra, ok, message, edge, tmp_path):
    proc = _cli(*_argv(job, edge, str(tmp_path / "out"), extra), cwd=tmp_path)
    check_outcome(job, extra, proc.returncode, proc.stdout, proc.stderr)
    assert (proc.returncode == 0) == ok, proc.stderr
    assert message in (proc.stdout if ok else proc.stderr), (proc.stdout, proc.stderr)
