"""Shared test fixtures: real services started on 127.0.0.1 and stopped afterwards.

- ``moto_server``: a real S3 protocol server (moto) for the whole session; its endpoint and
  dummy credentials are exported in the standard AWS variables *before* Ray starts, so Ray
  workers inherit them. ``s3_bucket`` gives each test a fresh bucket.
- ``mlflow_server``: a real ``mlflow server`` with a SQLite store and proxied artifacts.
- ``ray_local``: a private local Ray (``address="local"``) with logical CPUs over-subscribed so
  Ray Data tasks and train workers can run side by side on 2 cores.
- ``fixtures_dir``: ``tests/fixtures``, small data kept in the repository (its README says where
  each file comes from): ``coco8-seg`` (the real 8-image sample, given by ``coco8_seg``), the
  KubeRay CRD and MLflow chart schemas (``schemas/``), the reference state-dict listing.
- ``reference_dir``: the reference checkpoint folder (``$COCOSEG_SHARED/reference``, by default
  ``../shared/reference``; 9.4 MB, not in the repository). Only the reference checkpoint tests
  use it, and they skip with the reason when it is absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIXTURES = REPO / "tests" / "fixtures"

# Every Ray the suite starts (its own, the jobs' private ones, the 2-node cluster) inherits this.
# Ray's log monitor looks for new log files on each pass, ten a second, until a node has 1,000 of
# them; at 0 it looks twice a second (log lines are still read ten times a second). Measured here:
# 2.1 -> 1.2 CPU-s a minute on a Ray starting 48 actors; the suite's 8 log monitors took ~70 CPU-s.
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# The jobs' OpenMP policy (cocoseg/jobs/__init__.py) for the pytest workers too, set before
# any test imports torch: two workers and their Rays share 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _shared_dir() -> Path:
    return Path(os.environ.get("COCOSEG_SHARED", REPO.parent / "shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A server's start-up on a heavily loaded host (two xdist workers starting services at once, other
# jobs on the machine) can take minutes; waiting costs nothing when it is quick, so no start waits less.
MIN_START_WAIT_S = 600


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers (below 500), at least :data:`MIN_START_WAIT_S`; fail at once if
    ``proc`` exits, with the end of its ``log``."""
    timeout = max(timeout, MIN_START_WAIT_S)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered:\n{detail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback only)
                if resp.status < 500:
                    return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# The slowest modules run first, longest first: with `make test` (two xdist workers, `--dist
# loadfile --no-loadscope-reorder`, each module whole on one worker, so its module fixtures start
# once) that keeps both workers busy to the end; serially it only moves them to the front. A
# session fixture starts once per worker that needs it: keep tests of one expensive fixture in one
# module. (Not `--dist loadgroup`: xdist 3.8 cannot rename pytest 9's node ids.)
SLOWEST_FIRST = ["test_chaos", "test_demo", "test_tune", "test_retrain", "test_multinode", "test_tracking_outage",
                 "test_infer", "test_evaluate", "test_train_pipeline", "test_registry", "test_gpu_check",
                 "test_registry_auth", "test_learning_auto", "test_spot_cluster", "test_node_loss", "test_export_cli"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _mlflow_env_left_alone():
    """No test, and no code under it, leaves MLflow's process-wide URI or experiment in ``os.environ``
    (``mlflow.set_tracking_uri`` / ``set_registry_uri`` / ``set_experiment`` export them there, and
    every later subprocess of this pytest worker would talk to that server): checked after each
    test, put back, and the test fails naming what it left. (``monkeypatch`` changes are undone
    before this runs.)"""
    from cocoseg.registry.client import FLUENT_ENV
    from cocoseg.utils import restore_env

    saved = {k: os.environ.get(k) for k in FLUENT_ENV}
    yield
    left = {k: os.environ.get(k) for k in FLUENT_ENV if os.environ.get(k) != saved[k]}
    restore_env(saved)
    assert not left, f"the test left {left} in os.environ (MLflow's fluent setters export them; scope them)"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on shared, oversubscribed cores two threads spin and lose."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: small test data kept in the repository (never skips)."""
    return FIXTURES


@pytest.fixture(scope="session")
def coco8_seg(fixtures_dir: Path) -> Path:
    """The real 8-image COCO sample (COCO JSON and YOLO labels), ``tests/fixtures/coco8-seg``."""
    return fixtures_dir / "coco8-seg"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder outside the repository (``$COCOSEG_SHARED``, else ``../shared``);
    skips when absent. Test data belongs in ``fixtures_dir`` (the infra schemas are in
    ``fixtures_dir / "schemas"``); the reference checkpoint tests use ``reference_dir``."""
    path = _shared_dir()
    if not path.is_dir():
        pytest.skip(f"shared folder {path} is absent (set COCOSEG_SHARED to point at it)")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference checkpoint files (``yolov8n-seg-random.pt`` and its ``.io.npz``, 9.4 MB, not
    in the repository): ``$COCOSEG_SHARED/reference``, else ``../shared/reference``."""
    path = _shared_dir() / "reference"
    if not path.is_dir():
        pytest.skip(f"reference checkpoint test: {path} is absent (the reference .pt is not in the "
                    "repository; set COCOSEG_SHARED to the folder that holds reference/)")
    return path


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory):
    """Start ``moto_server`` on loopback and export the AWS variables that point at it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    exe = BIN / "moto_server"
    cmd = [str(exe) if exe.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_REGION")}
    try:
        wait_http(f"{endpoint}/moto-api/", 30, proc, log)
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                          AWS_REGION="us-east-1")
        yield endpoint
    finally:
        stop(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_server: str) -> str:
    """A fresh, empty bucket on the moto server; returns ``s3://<bucket>``."""
    from cocoseg import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` (SQLite store, proxied artifacts) on loopback; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = root / "server.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    exe = BIN / "mlflow"
    cmd = [str(exe) if exe.exists() else "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", 180, proc, log)
        yield uri
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def ray_local(moto_server: str):
    """A private local Ray for the session (after the S3 variables are exported)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    from cocoseg.cluster import start_ray  # the jobs' start-up: retried once when it times out under load

    start_ray(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
              runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def cli(tmp_path: Path):
    """Run the ``cocoseg`` console command as a real subprocess; returns CompletedProcess."""

    def run(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None):
        exe = BIN / "cocoseg"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cocoseg"]
        proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, cwd=tmp_path)
        if check and proc.returncode != 0:
            raise AssertionError(f"cocoseg {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return proc

    return run


def has_executable(name: str) -> bool:
    return shutil.which(name) is not None or (BIN / name).exists()


# Session fixtures used by several modules are registered here, once: a fixture imported into each
# test module is a separate definition per module, so its "session" scope would not be shared (the
# tiny snapshot was ingested, and the basic-auth demo run, once per module that imported them).
# Imported last: both modules import helpers from this one.
from _tracking_support import auth_server_fixture  # noqa: E402,F401
from _train_support import tiny_snapshot_fixture  # noqa: E402,F401

