"""Node loss on the 2-node local cluster (``ray start --head`` + ``ray start --address``, see
``test_multinode.py``): the second node's raylet is SIGKILLed mid-run, after epoch 0 committed.

- ``scaling.min_workers=1``: Ray Train V2 runs elastic (``ScalingConfig(num_workers=(1, 2))``), so
  the group restarts with the one worker the head can still place, resumes from the newest
  complete checkpoint and the job finishes.
- ``scaling.min_workers`` unset (= ``num_workers``): the fixed group of 2 can never be placed
  again; the job fails with one line saying so (after Ray Train's group start timeouts, shortened
  here to 20 s through ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``).

Each node has 3 CPUs and each worker takes 2, so a node holds exactly one worker plus the data
stage's CPU.

Both cluster tests have been seen green (docs/reliability.md). They are ``extended`` (``make
test-all``), for the 15-minute budget of ``make test``: the elastic one takes ~90 s on 2 cores, the
fixed-size one waits out Ray Train's group start timeouts (~2 minutes). In ``make test``,
``test_multinode.py`` submits the same job to the same kind of 2-node cluster, and
``test_min_workers_config_and_the_one_line_diagnosis`` checks the scaling mapping, what the live
nodes can place and the one line, without a second node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _train_support import TINY
from conftest import REPO
from test_multinode import RAY, _stop_cluster

from cocoseg.engine import checkpoint as ckpt


@pytest.fixture
def three_cpu_nodes(moto_server):
    import shutil
    import tempfile

    from test_multinode import _ports, free_port

    temp_dir = tempfile.mkdtemp(prefix="csnl-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    base = ["--num-cpus", "3", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]

    def node_ports():
        return _ports("node-manager-port", "object-manager-port", "metrics-export-port",
                      "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")

    head = [RAY, "start", "--head", "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host",
            "127.0.0.1", "--dashboard-port", str(dash), *_ports("ray-client-server-port"), "--temp-dir", temp_dir,
            *base, *node_ports()]
    second = [RAY, "start", "--address", f"127.0.0.1:{gcs}", "--temp-dir", f"{temp_dir}/w", *base, *node_ports()]
    try:
        for cmd in (head, second):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        yield {"dashboard": f"http://127.0.0.1:{dash}", "env": env, "second": f"{temp_dir}/w/"}
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _second_raylet(marker: str) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd.split(" ")[0] and marker in cmd:
            return p
    raise AssertionError(f"no raylet of the second node ({marker})")


def _run_and_lose_a_node(cluster, tiny_snapshot, root: Path, extra: list[str]):
    overrides = [*TINY, f"storage.root={root}", f"train.snapshot={tiny_snapshot}", "scaling.num_workers=2",
                 "scaling.cpus_per_worker=2", "scaling.placement_strategy=SPREAD", "train.epochs=3",
                 "train.close_mosaic=0", "tracking.run_name=nl", "scaling.max_failures=2", *extra]
    env_vars = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    env_vars.update(RAY_TRAIN_ENABLE_PRINT_PATCH="0", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="20")
    runtime_env = {"env_vars": env_vars, "excludes": [".git", ".venv*", "*.egg-info", ".cocoseg"]}
    cmd = [RAY, "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "-m", "pipelines.train", *overrides]
    job = subprocess.Popen(cmd, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = root / "runs" / "nl"
    deadline = time.time() + 900
    while time.time() < deadline and job.poll() is None:
        done = {ckpt.check_complete(u)["epoch"] for u in ckpt.checkpoint_dirs(str(run_dir))
                if (Path(u) / ckpt.MARKER_FILE).exists()}
        if 0 in done:
            break
        time.sleep(0.2)
    assert job.poll() is None, "the job ended before epoch 0 committed:\n" + job.stdout.read()[-4000:]
    raylet = _second_raylet(cluster["second"])
    raylet.send_signal(signal.SIGKILL)
    killed_at = time.time()
    out, _ = job.communicate(timeout=1500)
    print(f"\nsecond node's raylet (pid {raylet.pid}) SIGKILLed after epoch 0 committed; job output tail:\n"
          + out[-1500:])
    attempts = [json.loads(p.read_text()) for p in sorted((run_dir / "workers").glob("attempt-*.json"))]
    return job.returncode, out, attempts, killed_at, run_dir


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.timeout(2400)
def test_node_loss_with_min_workers_goes_on_with_one_worker(three_cpu_nodes, tiny_snapshot, tmp_path):
    rc, out, attempts, killed_at, run_dir = _run_and_lose_a_node(three_cpu_nodes, tiny_snapshot, tmp_path / "s",
                                                                 ["scaling.min_workers=1"])
    assert rc == 0, out[-5000:]
    assert "succeeded" in out and "MLflow run" in out  # the driver's own logs came back to the submitter
    first = [a for a in attempts if a["time"] < killed_at]
    later = [a for a in attempts if a["time"] > killed_at]
    assert len({a["node_id"] for a in first}) == 2 and {a["world_size"] for a in first} == {2}
    assert later and {a["world_size"] for a in later} == {1}, later
    assert min(a["start_epoch"] for a in later) >= 1  # resumed, epoch 0 not redone
    assert ckpt.check_complete(run_dir / "weights" / "last", hashes=True)["epoch"] == 2


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.timeout(2400)
def test_node_loss_without_min_workers_fails_in_one_line(three_cpu_nodes, tiny_snapshot, tmp_path):
    rc, out, _, _, _ = _run_and_lose_a_node(three_cpu_nodes, tiny_snapshot, tmp_path / "s", [])
    assert rc != 0
    # `ray job submit` repeats the tail of a failed job's log after "Status message:"; the job's own
    # output is what comes before it.
    streamed = out.split("Status message:")[0]
    lines = [line for line in streamed.splitlines() if line.startswith("train: error:")]
    assert len(lines) == 1 and "can no longer place the worker group" in lines[0], out[-5000:]
    assert "scaling.min_workers=1" in lines[0]


def test_min_workers_config_and_the_one_line_diagnosis(ray_local):
    from cocoseg.config import ConfigError, load_config
    from cocoseg.engine.checks import lost_capacity, scaling_workers

    assert scaling_workers(load_config(None, ["scaling.num_workers=2"]).scaling) == 2
    assert scaling_workers(load_config(None, ["scaling.num_workers=2", "scaling.min_workers=2"]).scaling) == 2
    assert scaling_workers(load_config(None, ["scaling.num_workers=4", "scaling.min_workers=1"]).scaling) == (1, 4)
    with pytest.raises(ConfigError, match="scaling.min_workers"):
        load_config(None, ["scaling.num_workers=2", "scaling.min_workers=3"])
    cpus = int(sum(n["Resources"].get("CPU", 0) for n in ray_local.nodes() if n["Alive"]))
    assert lost_capacity(load_config(None, [f"scaling.num_workers={cpus}", "scaling.cpus_per_worker=1"]).scaling) is None
    err = lost_capacity(load_config(None, [f"scaling.num_workers={cpus + 2}", "scaling.cpus_per_worker=1"]).scaling)
    assert err is not None and "\n" not in str(err)
    assert "can no longer place the worker group" in str(err) and f"scaling.min_workers={cpus}" in str(err)
    assert lost_capacity(load_config(None, [f"scaling.num_workers={cpus + 2}", f"scaling.min_workers={cpus}",
                                            "scaling.cpus_per_worker=1"]).scaling) is None
