"""Spot GPUs and stuck ranks on real Ray (``extended``: ``make test-all``; ``test_spot.py`` covers
the same code paths in ``make test``).

- **Preemption**, on a 2-node local cluster (``ray start --head`` + ``ray start --address``, as
  ``test_node_loss.py``): a run of 2 workers (one per node, SPREAD) is submitted; mid-epoch,
  ``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds 30`` drains
  the second node (the one holding a worker, not the head) and its raylet is SIGKILLed at the
  deadline. The run finishes on the head; the steps lost, counted from the attempt journal, are at
  most ``scaling.preemption_poll_steps``; every image of the interrupted epoch is trained exactly
  once per worker split, in the very order of an uninterrupted run of the same seed on the same
  cluster (the image trace, ``COCOSEG_TRACE_IMAGES``), and the final metrics match that run's.
- **A stuck rank**, on the session's local Ray: rank 1 is SIGSTOPped mid-epoch; the watchdog
  (``scaling.hang_timeout_s``) detects it, writes the stacks, fails the group; Ray Train restarts it
  from the newest complete checkpoint and the run finishes, with the ``hang`` record in the journal.

Run with ``-s`` to see the timelines.
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
from _train_support import TINY, make_snapshot
from conftest import REPO
from test_multinode import RAY, _ports, _stop_cluster, free_port

from cocoseg.engine import checkpoint as ckpt
from cocoseg.engine.preemption import steps_lost
from cocoseg.tracking.journal import read_attempts, read_journal

POLL_STEPS = 2
TRAIN_IMAGES = 150
DEADLINE_S = 30
# Batch 3 on 2 workers, the nominal batch 6 (one optimiser step per micro-batch), 150 train images:
# 25 micro-batches per rank and epoch, so the 30 s drain window mostly ends inside an epoch.
SPOT = [*TINY, "train.batch_size=3", "train.nominal_batch=6", "scaling.num_workers=2", "scaling.cpus_per_worker=1",
        "train.epochs=3", "train.close_mosaic=0", "train.seed=11", f"scaling.preemption_poll_steps={POLL_STEPS}",
        "scaling.max_failures=2", "train.val_every=3"]


@pytest.fixture(scope="module")
def spot_snapshot(ray_local, tmp_path_factory) -> str:
    return make_snapshot(tmp_path_factory.mktemp("spot-snap"), images=TRAIN_IMAGES + 50, val_fraction=0.25)


@pytest.fixture
def head_and_spot_node(moto_server):
    """Head: 3 CPUs (holds both workers and the input actor after the loss); second: 2 CPUs."""
    import shutil
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="cssp-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()

    def node(cpus: int) -> list[str]:
        return ["--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                *_ports("node-manager-port", "object-manager-port", "metrics-export-port",
                        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")]

    head = [RAY, "start", "--head", "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host",
            "127.0.0.1", "--dashboard-port", str(dash), *_ports("ray-client-server-port"), "--temp-dir", temp_dir,
            *node(3)]
    second = [RAY, "start", "--address", f"127.0.0.1:{gcs}", "--temp-dir", f"{temp_dir}/w", *node(2)]
    try:
        for cmd in (head, second):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        yield {"dashboard": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{gcs}", "env": env,
               "second": f"{temp_dir}/w/"}
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(cluster, snapshot: str, root: Path, name: str) -> subprocess.Popen:
    overrides = [*SPOT, f"storage.root={root}", f"train.snapshot={snapshot}", f"tracking.run_name={name}",
                 "scaling.placement_strategy=SPREAD"]
    env_vars = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    env_vars.update(RAY_TRAIN_ENABLE_PRINT_PATCH="0", COCOSEG_TRACE_IMAGES="1",
                    RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="1")
    runtime_env = {"env_vars": env_vars, "excludes": [".git", ".venv*", "*.egg-info", ".cocoseg"]}
    cmd = [RAY, "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "-m", "pipelines.train", *overrides]
    return subprocess.Popen(cmd, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trace(run_dir: Path) -> dict[str, list[dict]]:
    """attempt id + rank -> the trained micro-batches of that rank in that attempt."""
    out = {}
    for path in sorted((run_dir / "trace").glob("rank*.jsonl")):
        rank, attempt = path.stem.removeprefix("rank").split("-", 1)
        out[f"{attempt}:{rank}"] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def _epoch_ids(steps: list[dict], epoch: int, below_ni: int | None = None) -> list[int]:
    return [i for s in steps if s["epoch"] == epoch and (below_ni is None or s["ni"] < below_ni) for i in s["ids"]]


def _nodes(cluster) -> list[dict]:
    out = subprocess.run([RAY, "list", "nodes", "--address", cluster["dashboard"], "--format", "json"],
                         env=cluster["env"], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def _second_raylet(marker: str) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd.split(" ")[0] and marker in cmd:
            return p
    raise AssertionError(f"no raylet of the second node ({marker})")


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.timeout(3600)
def test_preempted_node_costs_at_most_the_poll_cadence(head_and_spot_node, spot_snapshot, tmp_path):
    cluster = head_and_spot_node
    t0 = time.time()
    timeline = [(0.0, "baseline run submitted")]
    base = _submit(cluster, spot_snapshot, tmp_path / "base", "base")
    out, _ = base.communicate(timeout=1500)
    assert base.returncode == 0, out[-5000:]
    timeline.append((time.time() - t0, "baseline finished; preempted run submitted"))

    job = _submit(cluster, spot_snapshot, tmp_path / "spot", "spot")
    run_dir = tmp_path / "spot" / "runs" / "spot"
    head = next(n["node_id"] for n in _nodes(cluster) if n["is_head_node"])
    deadline = time.time() + 1200
    while time.time() < deadline and job.poll() is None:  # early in epoch 1: epoch 0 committed, 2 steps in
        done = {ckpt.check_complete(u)["epoch"] for u in ckpt.checkpoint_dirs(str(run_dir))
                if (Path(u) / ckpt.MARKER_FILE).exists()}
        steps = [s for t in _trace(run_dir).values() for s in t if s["epoch"] == 1]
        if 0 in done and len(steps) >= 4:
            break
        time.sleep(0.2)
    assert job.poll() is None, "the job ended before the drain:\n" + job.stdout.read()[-4000:]
    workers = [json.loads(p.read_text()) for p in (run_dir / "workers").glob("attempt-*.json")]
    victim = next(w for w in workers if w["node_id"] != head)
    drain = subprocess.run([RAY, "drain-node", "--address", cluster["gcs"], "--node-id", victim["node_id"],
                            "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)",
                            "--deadline-remaining-seconds", str(DEADLINE_S)],
                           env=cluster["env"], capture_output=True, text=True, timeout=120)
    drained_at = time.time()
    assert drain.returncode == 0, drain.stdout + drain.stderr
    timeline.append((drained_at - t0, f"drain of the node of rank {victim['rank']}, deadline {DEADLINE_S} s"))
    time.sleep(max(0.0, drained_at + DEADLINE_S - time.time()))
    _second_raylet(cluster["second"]).send_signal(signal.SIGKILL)
    timeline.append((time.time() - t0, "its raylet SIGKILLed at the deadline"))
    out, _ = job.communicate(timeout=1500)
    timeline.append((time.time() - t0, f"job exited {job.returncode}"))
    records = read_attempts(str(run_dir))
    for r in records:
        if r["kind"] != "progress":
            timeline.append((r["time"] - t0, f"journal: {r['kind']} " + json.dumps(
                {k: v for k, v in r.items() if k in ("ni", "epoch", "epoch_rows", "world", "deadline_ms", "ranks")})))
    lost = steps_lost(records)
    print("\nspot timeline:\n" + "\n".join(f"  {t:7.1f} s  {w}" for t, w in sorted(timeline))
          + f"\nsteps lost per reclaim: {lost} (poll every {POLL_STEPS} optimiser steps)\njob tail:\n" + out[-1500:])
    assert job.returncode == 0, out[-5000:]

    kinds = [r["kind"] for r in records]
    assert kinds.count("preemption") == 1 and "jit_checkpoint" in kinds, kinds
    starts = [r for r in records if r["kind"] == "start"]
    assert len(starts) >= 2 and starts[-1]["world"] == 2
    assert lost and all(n <= POLL_STEPS for n in lost), lost
    notice = next(r for r in records if r["kind"] == "preemption")
    resumed = next(r for r in starts if r["time"] > notice["time"])
    epoch = resumed["epoch"]  # the interrupted one (the notice's, or a later one the window reached)
    # Resumed inside it from a just-in-time checkpoint (0 only if the deadline fell right after an
    # epoch end, the newest checkpoint then being that epoch's own: the check below still holds).
    assert resumed["epoch_rows"] > 0, resumed

    # Every image of the interrupted epoch once per worker split, in the uninterrupted run's order.
    trace, base_trace = _trace(run_dir), _trace(tmp_path / "base" / "runs" / "base")
    first = starts[starts.index(resumed) - 1]["attempt"]
    for rank in (0, 1):
        before = _epoch_ids(trace[f"{first}:{rank}"], epoch, below_ni=resumed["ni"])
        after = _epoch_ids(trace[f"{resumed['attempt']}:{rank}"], epoch)
        (uninterrupted,) = [_epoch_ids(v, epoch) for k, v in base_trace.items() if k.endswith(f":{rank}")]
        assert len(before) == resumed["epoch_rows"], rank
        assert before + after == uninterrupted, rank
        assert len(set(uninterrupted)) == len(uninterrupted) == TRAIN_IMAGES // 2

    final = read_journal(str(run_dir / "tracking" / "metrics.jsonl"))[-1]["metrics"]
    reference = read_journal(str(tmp_path / "base" / "runs" / "base" / "tracking" / "metrics.jsonl"))[-1]["metrics"]
    print("final val mask AP50-95 / box AP50 / train loss: preempted",
          [final.get(k) for k in ("val/mask_ap50_95", "val/box_ap50", "train/loss")], "uninterrupted",
          [reference.get(k) for k in ("val/mask_ap50_95", "val/box_ap50", "train/loss")])
    for key in ("val/mask_ap50_95", "val/mask_ap50", "val/box_ap50_95"):
        assert final[key] == pytest.approx(reference[key], abs=0.02), key
    # Stronger than the metrics of so short a run: the final (EMA) weights themselves. The same
    # batches in the same order, the same optimiser, EMA and RNG states: equal up to the order of
    # floating-point sums (bit-identical when seen: docs/reliability.md).
    from safetensors.torch import load_file

    ours, theirs = (load_file(str(d / "weights" / "last" / "model.safetensors"))
                    for d in (run_dir, tmp_path / "base" / "runs" / "base"))
    diff = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in theirs)
    print(f"final weights: max abs difference to the uninterrupted run {diff:.3g}")
    assert diff < 1e-4


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.timeout(1800)
def test_sigstopped_rank_is_detected_dumped_and_restarted(spot_snapshot, tmp_path):
    import threading

    from cocoseg.config import load_config
    from pipelines import train

    timeout_s = 20  # steps take ~1-5 s on 2 loaded cores
    cfg = load_config(None, [*SPOT, f"storage.root={tmp_path}", f"train.snapshot={spot_snapshot}",
                             "tracking.run_name=hang", f"scaling.hang_timeout_s={timeout_s}",
                             "scaling.cpus_per_worker=0.5", "scaling.preemption_poll_steps=0"])
    run_dir = tmp_path / "runs" / "hang"
    stopped: dict = {}

    def stopper():  # a third of epoch 0's training time into epoch 1 (journaled), as the chaos test
        deadline = time.time() + 900
        journal = str(run_dir / "tracking" / "metrics.jsonl")
        while time.time() < deadline and not (epochs := read_journal(journal)):
            time.sleep(0.1)
        time.sleep(epochs[0]["metrics"]["train/epoch_time_s"] / 3)
        victim = max((json.loads(p.read_text()) for p in (run_dir / "workers").glob("attempt-*rank1-*.json")),
                     key=lambda w: w["time"])  # the running attempt's rank 1
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped.update(victim, at=time.time())

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    try:
        train.run(cfg)
    finally:
        thread.join(5)
        if stopped:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(stopped["pid"], signal.SIGKILL)  # a process of this test's own Ray, if Ray left it
    hang = [r for r in read_attempts(str(run_dir)) if r["kind"] == "hang"]
    starts = [r for r in read_attempts(str(run_dir)) if r["kind"] == "start"]
    assert stopped and len(hang) == 1, hang
    print(f"\nrank 1 (pid {stopped['pid']}) SIGSTOPped; hang recorded {hang[0]['time'] - stopped['at']:.1f} s later: "
          + json.dumps(hang[0]))
    assert hang[0]["stuck_ranks"] == [1] and "no answer" in hang[0]["frames"]["1"]
    report = json.loads((Path(hang[0]["stacks"]) / "rank0.json").read_text())
    assert report["stalled_s"] <= timeout_s + 5  # fired within the timeout (+ its check interval, slack for load)
    assert "Thread" in (Path(hang[0]["stacks"]) / "rank0.txt").read_text()
    assert len(starts) == 2 and starts[1]["time"] > hang[0]["time"]
    assert ckpt.check_complete(run_dir / "weights" / "last", hashes=True)["epoch"] == 2  # finished
