"""A 2-node Ray cluster on this machine (``ray start --head`` + ``ray start --address``), training
submitted with ``ray job submit`` to the head's dashboard: 2 workers forced onto different nodes
(STRICT_SPREAD). The job succeeds, its logs come back, and the workers ran on 2 node ids.

The cluster is private to the test: token auth off on loopback (``RAY_AUTH_MODE=disabled``: Ray
2.60 turns it on for ``ray start --head`` once ``~/.ray/auth_token`` exists, and the joining node
and ``ray job submit`` then fail without the token; docs/architecture.md, "Ray facts"), its own
temp dir and free ports for everything that listens, so it never meets other Ray instances on a
shared machine. It is stopped by PID (raylets, then the rest, then the
GCS), never with ``ray stop``, which would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from _train_support import TINY
from conftest import BIN, REPO, free_port

from cocoseg import storage

RAY = str(BIN / "ray") if (BIN / "ray").exists() else "ray"


def _ports(*names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(free_port()))]


def _cluster_pids(temp_dir: str) -> list[psutil.Process]:
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return procs


def _stop_cluster(temp_dir: str) -> None:
    """SIGTERM in the order Ray itself uses (raylets, others, GCS), then SIGKILL stragglers."""
    procs = _cluster_pids(temp_dir)
    def name(p):
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""
    groups = [[p for p in procs if "raylet" in name(p)], [p for p in procs if "raylet" not in name(p)
              and "gcs_server" not in name(p)], [p for p in procs if "gcs_server" in name(p)]]
    for group in groups:
        for p in group:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        psutil.wait_procs(group, timeout=10)
    for p in _cluster_pids(temp_dir):
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.fixture
def two_node_cluster(moto_server):
    # Short paths (Ray's socket paths must stay < 108 chars); one per node, because two runtime-env
    # agents sharing a folder garbage-collect each other's unpacked working dirs.
    temp_dir = tempfile.mkdtemp(prefix="csmn-", dir="/tmp")
    worker_dir = f"{temp_dir}/w"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    base = ["--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]

    def node_ports() -> list[str]:
        return _ports("node-manager-port", "object-manager-port", "metrics-export-port",
                      "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")

    head = [RAY, "start", "--head", "--port", str(gcs_port), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
            *_ports("ray-client-server-port"), "--temp-dir", temp_dir, *base, *node_ports()]
    worker = [RAY, "start", "--address", f"127.0.0.1:{gcs_port}", "--temp-dir", worker_dir, *base, *node_ports()]
    try:
        for cmd in (head, worker):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        yield {"dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env, "temp_dir": temp_dir}
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of compute on 2 shared cores; generous for loaded CI hosts
def test_job_submit_trains_on_two_nodes(two_node_cluster, tiny_snapshot, s3_bucket, tmp_path, monkeypatch):
    """Also: with an ``s3://`` storage root and no tracking URI, the job's MLflow run lands in the
    one local store every job resolves to (``$COCOSEG_HOME/mlflow.db``), whatever its working
    directory (the job driver runs in a fresh one)."""
    root = f"{s3_bucket}/store"  # as on a real cluster: both nodes reach it
    home = tmp_path / "home"
    overrides = [*TINY, f"storage.root={root}", f"train.snapshot={tiny_snapshot}", "scaling.num_workers=2",
                 "scaling.placement_strategy=STRICT_SPREAD", "scaling.cpus_per_worker=1", "train.epochs=1",
                 "train.close_mosaic=0", "tracking.run_name=mn", "scaling.max_failures=0"]
    runtime_env = {"env_vars": {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                           "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
    # No tracking URI: the job must resolve the store itself (COCOSEG_HOME's SQLite).
    runtime_env["env_vars"].update(RAY_TRAIN_ENABLE_PRINT_PATCH="0", COCOSEG_HOME=str(home), MLFLOW_TRACKING_URI="")
    runtime_env["excludes"] = [".git", ".venv*", "*.egg-info", ".cocoseg", "__pycache__"]
    cmd = [RAY, "job", "submit", "--address", two_node_cluster["dashboard"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "-m", "pipelines.train", *overrides]
    started = time.time()
    proc = subprocess.run(cmd, env=two_node_cluster["env"], capture_output=True, text=True, timeout=900)
    print(f"\nray job submit took {time.time() - started:.0f} s; last log lines:\n" + proc.stdout[-1500:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert "MLflow run" in proc.stdout and "best weights" in proc.stdout  # the driver's logs came back
    run_dir = storage.join(root, "runs", "mn")
    workers = [storage.read_json(e.uri) for e in storage.list_files(storage.join(run_dir, "workers"))]
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert len({w["node_id"] for w in workers}) == 2, workers

    # One store: the run is in $COCOSEG_HOME's SQLite, and every job (evaluate, register, retrain,
    # tune resolve through the same function) finds that store from any other working directory.
    from mlflow import MlflowClient

    from cocoseg import tracking

    store = f"sqlite:///{home.resolve()}/mlflow.db"
    runs = MlflowClient(store).search_runs(
        [e.experiment_id for e in MlflowClient(store).search_experiments()], "attributes.run_name = 'mn'")
    assert [r.info.status for r in runs] == ["FINISHED"], runs
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COCOSEG_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri("", root) == store
