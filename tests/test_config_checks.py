"""The config edge (cocoseg.config_checks, issue 27): each named cross-key check refuses its case
in one line naming every key involved and the fix, the ranges config.py leaves out, the paths
made absolute once, the warnings, and ``--check``; then the evaluate / infer pool against the
cluster's resources (cocoseg.batch.sizing) and the stall watch (cocoseg.cluster.StallWatch)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from cocoseg.config import ConfigError, load_config
from cocoseg.config_checks import CHECKS, CheckOnly, absolute, prepare, ready, set_check_only


def _refused(job: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        prepare(job, load_config(None, list(overrides)))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("job, overrides, keys, fix", [
    ("tune", ["tune.epochs=2", "tune.grace_period=3"], ["tune.grace_period=3", "tune.epochs=2"],
     "set tune.grace_period=2 or less"),
    ("tune", ["train.epochs=4", "tune.grace_period=5"], ["tune.grace_period=5", "train.epochs=4"],
     "set tune.grace_period=4 or less"),
    ("tune", ["train.time_budget_h=2"], ["train.time_budget_h=2", "tune.epochs"], "set train.time_budget_h=0"),
    ("train", ["train.augment=mosaic9"], ["train.augment='mosaic9'"], "yolov8"),
    ("train", ["data.max_train_images=1", "scaling.num_workers=2"], ["data.max_train_images=1", "scaling.num_workers=2"],
     "set data.max_train_images=2 or more"),
    ("train", ["scaling.threads_per_worker=64", "scaling.cpus_per_worker=2"],
     ["scaling.threads_per_worker=64", "scaling.cpus_per_worker=2"], "set scaling.threads_per_worker=2"),
    ("export", ["export.exporter=dynamo", "export.nms=true"], ["export.nms=true", "export.exporter=dynamo"],
     "set export.exporter=torchscript or export.nms=false"),
    ("export", ["export.imgsz=1280", "export.max_hw=640", "export.dynamic_hw=true"],
     ["export.imgsz=1280", "export.max_hw=640", "export.dynamic_hw=true"], "set export.max_hw=1280 or more"),
])
def test_each_cross_key_check_names_its_keys_and_the_fix(job, overrides, keys, fix):
    message = _refused(job, *overrides)
    for key in keys:
        assert key in message, message
    assert fix in message, message


def test_every_named_check_is_exercised_above():
    # A new check gets a case in the table above (its name is what docs/reliability.md lists).
    assert {c.name for c in CHECKS} == {"asha-grace-period", "time-budget-vs-tune", "augment-preset", "workers-vs-images", "threads-vs-cpus",
                                        "export-backends", "export-profile-hw"}


def test_engine_format_without_tensorrt_here_is_said_before_the_export(caplog):
    # The export job skips the engine where TensorRT is missing (tests/test_export_cli.py): said first.
    from importlib.util import find_spec

    cfg = prepare("export", load_config(None, ["export.formats=[onnx,engine]"]))
    with caplog.at_level(logging.WARNING, logger="cocoseg"):
        ready("export", cfg)
    said = [r.getMessage() for r in caplog.records if "export.formats includes 'engine'" in r.getMessage()]
    assert len(said) == (0 if find_spec("tensorrt") else 1), said


@pytest.mark.parametrize("override, message", [
    ("train.lr0=0", "train.lr0: must be in (0, 10], got 0.0"),
    ("train.lr0=.nan", "train.lr0: must be a finite number, got nan"),
    ("train.momentum=1.5", "train.momentum: must be in [0, 1)"),
    ("train.nominal_batch=0", "train.nominal_batch: must be >= 1"),
    ("train.seed=-1", "train.seed: must be an integer in [0, 2**32 - 1]"),
    ("storage.root=' '", "storage.root: must not be empty"),
    ("tracking.system_metrics_interval_s=0", "tracking.system_metrics_interval_s: must be > 0"),
])
def test_ranges_that_config_leaves_out(override, message):
    assert message in _refused("train", override)


def test_a_check_only_applies_to_its_jobs():
    cfg = load_config(None, ["tune.epochs=2", "tune.grace_period=3", "train.lr0=-1"])
    prepare("evaluate", cfg)  # neither tune's nor train's sections are the evaluate job's


def test_local_paths_become_absolute_once_and_uris_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snap").mkdir()
    (tmp_path / "w").mkdir()
    cfg = prepare("train", load_config(None, ["storage.root=.cocoseg", "train.snapshot=snap", "model.weights=w",
                                              "tracking.tracking_uri=sqlite:///m.db"]))
    assert cfg.storage.root == str(tmp_path / ".cocoseg")
    assert cfg.train.snapshot == str(tmp_path / "snap") and cfg.model.weights == str(tmp_path / "w")
    assert cfg.tracking.tracking_uri == f"sqlite:///{tmp_path}/m.db"
    assert prepare("train", cfg) == cfg  # idempotent: a trial's train() prepares the same config again
    for uri in ("s3://bucket/x", "models:/m@champion", "http://h:5000", ""):
        assert absolute(uri) == uri
    latest = prepare("train", load_config(None, ["train.snapshot=latest"]))
    assert latest.train.snapshot == "latest"


def test_missing_paths_are_refused_once_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _refused("train", "train.snapshot=.cocoseg/snapshots/abc")
    assert message.startswith(f"train.snapshot={tmp_path}/.cocoseg/snapshots/abc: the snapshot does not exist")
    assert _refused("train", "model.weights=nope.pt").startswith(f"model.weights={tmp_path}/nope.pt: the weights")
    assert "ingest.source: is empty" in _refused("ingest")
    assert prepare("ingest", load_config(None, ["ingest.source=src"])).ingest.source == str(tmp_path / "src")


def test_warnings_are_one_line_each_and_check_only_stops_the_job(caplog):
    cfg = prepare("tune", load_config(None, ["tune.epochs=3", "train.close_mosaic=10", "train.warmup_epochs=5",
                                             "tune.max_concurrent_trials=4", "tune.num_trials=2"]))
    with caplog.at_level(logging.WARNING, logger="cocoseg"):
        ready("tune", cfg)
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("train.close_mosaic=10 >= tune.epochs=3: no epoch uses mosaic") for m in lines), lines
    assert any(m.startswith("train.warmup_epochs=5 > tune.epochs=3") for m in lines), lines
    assert any(m.startswith("tune.max_concurrent_trials=4 > tune.num_trials=2") for m in lines), lines
    assert all("\n" not in m for m in lines)
    set_check_only(True)
    try:
        with pytest.raises(CheckOnly, match=r"^config ok \(trials=2\); nothing was started$"):
            ready("tune", cfg, {"trials": 2})
    finally:
        set_check_only(False)


# --------------------------------------------------------------------------------------------
# The evaluate / infer pool against the cluster's resources


def _plan(overrides, resources, read=1.0):
    from cocoseg.batch.sizing import plan_pool

    return plan_pool(load_config(None, overrides), resources, read)


def test_pool_that_would_wait_forever_is_refused_with_what_fits():
    from cocoseg.batch.sizing import EVALUATE_READ_CPUS

    # The hangs: 2 actors, or 1 actor of 2 CPUs, on a 2-CPU cluster leave the reads nothing.
    with pytest.raises(ConfigError) as info:
        _plan(["evaluate.actors=2"], {"CPU": 2.0}, EVALUATE_READ_CPUS)
    message = str(info.value)
    assert "evaluate.actors=2 x evaluate.cpus_per_actor=1 CPU + 1 CPU for Ray Data's read tasks = 3 CPUs" in message
    assert "set evaluate.actors=1 or evaluate.cpus_per_actor=0.5" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"set evaluate.actors=0 or evaluate.cpus_per_actor=1$|set evaluate.cpus_per_actor=1$"):
        _plan(["evaluate.actors=1", "evaluate.cpus_per_actor=2"], {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"evaluate.actors=3 with evaluate.use_gpu=true needs 3 GPUs, the cluster has 2"):
        _plan(["evaluate.actors=3", "evaluate.use_gpu=true"], {"CPU": 16.0, "GPU": 2.0})
    with pytest.raises(ConfigError, match=r"evaluate.use_gpu=true but the cluster has no GPU"):
        _plan(["evaluate.use_gpu=true"], {"CPU": 16.0})


def test_default_pool_uses_every_core_of_a_local_machine(monkeypatch):
    from cocoseg.batch.sizing import EVALUATE_READ_CPUS, INFER_READ_CPUS, local_ray_kwargs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cores = os.cpu_count() or 1
    for read in (EVALUATE_READ_CPUS, INFER_READ_CPUS):
        kwargs = local_ray_kwargs(read)
        pool = _plan([], {"CPU": float(kwargs["num_cpus"])}, read)
        assert pool.actors * pool.threads == cores, (kwargs, pool)
    pool = _plan(["evaluate.cpus_per_actor=2"], {"CPU": 9.0})
    assert (pool.actors, pool.threads) == (4, 2)
    assert _plan(["evaluate.threads_per_actor=3"], {"CPU": 3.0}).threads == 3
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert "num_cpus" not in local_ray_kwargs(1.0)  # a cluster is taken as it is


def test_automatic_pool_starts_no_more_actors_than_batches():
    from cocoseg.batch.sizing import plan_pool

    cfg = load_config(None, ["evaluate.batch_size=16"])
    assert plan_pool(cfg, {"CPU": 9.0}, 1.0).actors == 8  # rows unknown: every CPU
    assert [plan_pool(cfg, {"CPU": 9.0}, 1.0, rows=n).actors for n in (1, 16, 17, 48, 5000)] == [1, 1, 2, 3, 8]
    assert plan_pool(load_config(None, ["evaluate.actors=4"]), {"CPU": 9.0}, 1.0, rows=5).actors == 4  # as set
    gpu = load_config(None, ["evaluate.use_gpu=true", "evaluate.batch_size=8"])
    assert plan_pool(gpu, {"CPU": 16.0, "GPU": 4.0}, 1.0, rows=10).actors == 2


def test_stall_watch_says_what_the_job_waits_for(caplog):
    from cocoseg.cluster import StallWatch

    with caplog.at_level(logging.WARNING, logger="cocoseg"):
        with StallWatch("evaluate", 0.2, lambda: "2 actor(s) and the reads; the cluster has 0 of 2 CPUs free") as watch:
            deadline = time.monotonic() + 30
            while not watch.warnings and time.monotonic() < deadline:
                time.sleep(0.05)
    assert watch.warnings >= 1
    line = next(r.getMessage() for r in caplog.records if "no progress" in r.getMessage())
    assert line.startswith("evaluate: no progress for ") and line.endswith("0 of 2 CPUs free")

    with StallWatch("infer", 30, lambda: "never") as busy:
        for _ in range(5):
            busy.tick()
    assert busy.warnings == 0
