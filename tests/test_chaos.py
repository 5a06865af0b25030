"""Chaos: one short training run (CPU, 2 workers, 64 px, 5 epochs) is SIGKILLed at three seeded
random moments, then resumed to the end:

A. a worker (seeded rank) at a seeded delay into epoch 1's training;
B. rank 0 while it uploads epoch 2's checkpoint (after a seeded number of its files landed;
   the uploader is SIGSTOPped the moment that is seen, so the kill is inside the upload however
   fast the disk);
C. the driver and its whole private Ray (every descendant process) a seeded instant after epoch
   2's redo committed: between epochs, while a validation is in flight (asynchronous validation and
   upload are the defaults). The run is then started again with the same run name.

The MLflow server is the suite's basic-auth one and the drivers get its admin password inside
``MLFLOW_TRACKING_URI``, as a person pastes it: the password must be nowhere afterwards, in no byte
of the run folder (Ray's checkpoints, the journal, the worker records), the drivers' output or the
server's stores (its own config file aside).

After the resume: no partial checkpoint is left, every epoch is in MLflow exactly once and
validated once (the one in flight at kill C too), ``weights/best`` is the best validated epoch, each
kill made the run redo at most the epoch it interrupted (the next attempt starts right after the
newest *complete* checkpoint at the kill), every attempt has its records, and the final weights
load. The moments and the epochs redone are printed (``-s``); ``COCOSEG_CHAOS_SEED`` picks
other moments. The driver runs as a subprocess (``python -m pipelines.train``), because only a
separate process can be SIGKILLed; its private Ray is found through its process tree.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _tracking_support import ADMIN, password_leaks, secret_uri
from _train_support import ASYNC_VAL, TINY
from conftest import REPO

from cocoseg.engine import checkpoint as ckpt
from cocoseg.engine.validation import STAGE_DIR
from cocoseg.model.weights import load_checkpoint

mlflow = pytest.importorskip("mlflow")

EPOCHS = 5  # headroom: each kill needs an epoch after it, whatever epoch the kill before it landed in
WAIT_S = 900  # per phase; generous for 2 cores shared with other jobs


class Chaos:
    def __init__(self, run_dir: Path, seed: int):
        self.run_dir, self.rng, self.t0 = run_dir, random.Random(seed), time.time()
        self.log: list[str] = []
        self.kills: list[dict] = []  # what each kill interrupted and where the next attempt starts
        self.restarts: list[dict] = []  # the newest complete checkpoint when each new attempt was seen

    def note(self, what: str) -> None:
        self.log.append(f"{time.time() - self.t0:7.1f} s  {what}")

    def complete(self) -> set[int]:
        done = set()
        for uri in ckpt.checkpoint_dirs(str(self.run_dir)):
            try:
                done.add(int(ckpt.check_complete(uri)["epoch"]))
            except (ckpt.CheckpointError, FileNotFoundError, KeyError):
                continue
        return done

    def epoch_seconds(self, epoch: int) -> float | None:
        """Training time of ``epoch`` as rank 0 recorded it (``tracking/epoch_timing.jsonl``, written
        as the epoch ends; the journal's record may come later, with its validation), or None yet."""
        try:
            lines = (self.run_dir / "tracking" / "epoch_timing.jsonl").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            record = json.loads(line)
            if record["epoch"] == epoch:
                return float(record["train_s"])
        return None

    def journaled(self) -> dict[int, dict]:
        journal = self.run_dir / "tracking" / "metrics.jsonl"
        try:
            return {r["step"]: r for r in map(json.loads, journal.read_text().splitlines())}
        except (OSError, ValueError):  # not there yet, or caught mid-write
            return {}

    def validations_in_flight(self) -> list[int]:
        """Epochs staged for validation (committed stage) whose record is not journaled yet."""
        staged = []
        for folder in sorted((self.run_dir / STAGE_DIR).glob("epoch-*")):
            try:
                ckpt.check_complete(folder)
            except (ckpt.CheckpointError, FileNotFoundError):
                continue
            staged.append(int(folder.name.split("-")[1]))
        logged = self.journaled()
        return [e for e in staged if e not in logged]

    def attempts(self) -> list[dict]:
        out = []
        for p in sorted((self.run_dir / "workers").glob("attempt-*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):  # being written
                continue
        return out

    def wait(self, what: str, cond, driver: subprocess.Popen, poll: float = 0.05):
        deadline = time.time() + WAIT_S
        while time.time() < deadline:
            value = cond()
            if value:
                return value
            if driver.poll() is not None:
                raise AssertionError(f"the driver exited ({driver.returncode}) while waiting for {what}")
            time.sleep(poll)
        raise AssertionError(f"timed out waiting for {what}")

    def group_after(self, t: float, driver) -> list[dict]:
        """Both ranks' records of the first worker group started after time ``t``; notes the newest
        complete checkpoint at that moment (what the group must resume from)."""
        def found():
            fresh = [a for a in self.attempts() if a["time"] > t]
            return fresh if len({a["rank"] for a in fresh}) == 2 else None
        group = self.wait("a new worker group", found, driver)
        self.seen_start()
        return group

    def seen_start(self) -> None:
        """Record the newest complete checkpoint as a new attempt is seen. An epoch takes seconds
        and this is seen within 50 ms of the attempt's record, so nothing newer can have committed."""
        self.restarts.append({"time": time.time(), "newest": max(self.complete(), default=-1)})

    def killed(self, kind: str, at: float, interrupted: int) -> None:
        self.kills.append({"kind": kind, "time": at, "interrupted": interrupted})


def _start(overrides: list[str], log: Path, tracking_uri: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "RAY_ADDRESS"))}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", RAY_TRAIN_ENABLE_PRINT_PATCH="0",
               MLFLOW_TRACKING_URI=tracking_uri)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipelines.train", *overrides], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _started(c: Chaos, overrides: list[str], log: Path, tracking_uri: str) -> subprocess.Popen:
    """Start the driver and wait for its first worker group; on a host so loaded that Ray's own
    start-up times out (a fixed 30 s in Ray 2.60), start it again (at most 3 tries)."""
    for _ in range(3):
        since, offset = time.time(), log.stat().st_size if log.exists() else 0
        driver = _start(overrides, log, tracking_uri)
        while driver.poll() is None and not [a for a in c.attempts() if a["time"] > since]:
            time.sleep(0.1)
        if driver.poll() is None:
            c.seen_start()
            return driver
        tail = log.read_bytes()[offset:].decode(errors="replace")
        if "timed out during startup" not in tail:
            return driver  # a real failure: the caller's waits report it
        c.note("Ray start-up timed out (loaded host): driver started again")
    return driver


def _kill_worker_mid_step(c: Chaos, driver, group: list[dict]) -> None:
    c.wait("epoch 0's checkpoint", lambda: 0 in c.complete(), driver)
    # The moment is a seeded fraction of epoch 0's own training time (from the run's journal), so
    # it lands inside epoch 1 on a quiet host (an epoch of ~1 s) and on a loaded one alike; epoch 0
    # also paid the input actors' first start, so epoch 1 is shorter and the fraction stays low.
    seconds = c.wait("epoch 0's timing", lambda: c.epoch_seconds(0), driver)
    delay, rank = c.rng.uniform(0.05, 0.4) * seconds, c.rng.choice([0, 1])
    time.sleep(delay)
    pid = next(a["pid"] for a in group if a["rank"] == rank)
    last = max(c.complete())
    os.kill(pid, signal.SIGKILL)
    c.note(f"A: SIGKILL rank {rank} (pid {pid}) {delay:.2f} s after epoch 0 committed (epoch 0 trained "
           f"{seconds:.1f} s); "
           f"epoch {last + 1} in progress")
    c.killed("worker mid-step", time.time(), last + 1)


def _kill_uploader(c: Chaos, driver, group: list[dict]) -> None:
    epoch = group[0]["start_epoch"] + 1  # the new group's second epoch
    folder = c.run_dir / f"{ckpt.CHECKPOINT_PREFIX}epoch-{epoch:04d}"
    files_before = c.rng.randint(0, 3)
    pid = next(a["pid"] for a in group if a["rank"] == 0)

    def landed():
        try:
            names = [n for n in os.listdir(folder) if ".tmp-" not in n]
        except FileNotFoundError:
            return None
        if ckpt.MARKER_FILE in names or len(names) >= files_before:
            os.kill(pid, signal.SIGSTOP)  # freeze the upload where it is, then look
            return sorted(os.listdir(folder))
        return None

    names = c.wait(f"epoch {epoch}'s upload", landed, driver, poll=0.002)
    os.kill(pid, signal.SIGKILL)
    inside = ckpt.MARKER_FILE not in names
    c.note(f"B: SIGKILL rank 0 (pid {pid}) {'during' if inside else 'just after (missed)'} epoch {epoch}'s "
           f"upload, with {names} in {folder.name}")
    c.killed("worker during the checkpoint upload" if inside else "worker after the upload", time.time(),
             epoch if inside else epoch + 1)


def _kill_driver_between_epochs(c: Chaos, driver, group: list[dict]) -> None:
    epoch = group[0]["start_epoch"]
    c.wait(f"epoch {epoch}'s checkpoint", lambda: epoch in c.complete(), driver, poll=0.01)
    time.sleep(c.rng.uniform(0.0, 0.3))
    # asynchronous validation: the kill lands while a validation is in flight (a committed stage
    # whose record is not journaled yet; a validation takes seconds, an epoch's commit milliseconds)
    c.in_flight = c.wait("a validation in flight", c.validations_in_flight, driver, poll=0.01)
    tree = [driver, *psutil.Process(driver.pid).children(recursive=True)]
    last = max(c.complete())
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL) if isinstance(p, psutil.Process) else p.kill()
        except (psutil.Error, ProcessLookupError):
            pass
    driver.wait(60)
    psutil.wait_procs([p for p in tree if isinstance(p, psutil.Process)], timeout=30)
    c.note(f"C: SIGKILL the driver (pid {driver.pid}) and its {len(tree) - 1} Ray processes after epoch "
           f"{last} committed, with the validation of epoch(s) {c.in_flight} in flight")
    c.killed("driver between epochs", time.time(), last + 1)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sigkills_at_random_moments_lose_nothing(tiny_snapshot, auth_server, tmp_path, monkeypatch):
    seed = int(os.environ.get("COCOSEG_CHAOS_SEED", "12"))
    overrides = [*TINY, *ASYNC_VAL, f"storage.root={tmp_path}", f"train.snapshot={tiny_snapshot}", "scaling.num_workers=2",
                 f"train.epochs={EPOCHS}", "train.close_mosaic=0", "scaling.max_failures=2",
                 "train.checkpoints_to_keep=1",
                 "tracking.run_name=chaos", "tracking.experiment=t-chaos", "tracking.system_metrics=false"]
    password, uri_with_password = auth_server["password"], secret_uri(auth_server)
    c = Chaos(tmp_path / "runs" / "chaos", seed)
    log = tmp_path / "driver.log"
    c.note(f"driver 1 starts (seed {seed})")
    driver = _started(c, overrides, log, uri_with_password)
    try:
        _kill_worker_mid_step(c, driver, c.group_after(0, driver))
        _kill_uploader(c, driver, c.group_after(c.kills[-1]["time"], driver))
        _kill_driver_between_epochs(c, driver, c.group_after(c.kills[-1]["time"], driver))
        c.note("driver 2 starts: the same run, resumed")
        driver = _started(c, overrides, log, uri_with_password)
        rc = driver.wait(WAIT_S)
        c.note(f"driver 2 exits {rc}")
    finally:
        if driver.poll() is None:
            driver.kill()
    attempts = c.attempts()
    starts, newest = [], []
    for kill in c.kills:
        nxt = min((a for a in attempts if a["time"] > kill["time"]), key=lambda a: a["time"])
        seen = min((r for r in c.restarts if r["time"] > kill["time"]), key=lambda r: r["time"])
        starts.append(nxt["start_epoch"])
        newest.append(seen["newest"])
        late = " (its checkpoint still completed: the surviving rank finished the upload)" \
            if seen["newest"] >= kill["interrupted"] else ""
        c.note(f"after the {kill['kind']} kill: epoch {kill['interrupted']} interrupted{late}, the next "
               f"attempt starts at epoch {nxt['start_epoch']} (redone: "
               f"{list(range(nxt['start_epoch'], kill['interrupted'] + 1)) or 'none'})")
    print("\nchaos timeline:\n" + "\n".join(f"  {line}" for line in c.log))
    assert rc == 0, log.read_text()[-5000:]

    # Each next attempt starts right after the newest complete checkpoint (an epoch whose checkpoint
    # completed is never trained again), so at most the interrupted epoch is trained twice. A kill of
    # one rank can land while the other rank still finishes the epoch's upload: then the interrupted
    # epoch counts as done and the attempt starts after it.
    assert starts == [n + 1 for n in newest], (starts, newest, c.kills)
    assert all(k["interrupted"] <= s <= k["interrupted"] + 1 for s, k in zip(starts, c.kills, strict=True)), (starts, c.kills)
    # one record per worker per attempt, none overwritten (4 groups of 2; Ray may add a retry)
    assert len(attempts) >= 2 * (len(c.kills) + 1) and len({a["pid"] for a in attempts}) == len(attempts)
    # No partial checkpoint anywhere; every reader's view is whole.
    for uri in ckpt.checkpoint_dirs(str(c.run_dir)):
        ckpt.check_complete(uri, hashes=True)
    for name in ("last", "best"):
        marker = ckpt.check_complete(c.run_dir / "weights" / name, hashes=True)
        model, card = load_checkpoint(str(c.run_dir / "weights" / name))
        assert card.num_classes == 4
    assert marker is not None and ckpt.check_complete(c.run_dir / "weights" / "last")["epoch"] == EPOCHS - 1
    # Every epoch in MLflow exactly once, in the one MLflow run of both drivers.
    run_ids = {json.loads(line)["run_id"] for line in (c.run_dir / "tracking" / "metrics.jsonl").read_text().splitlines()}
    assert len(run_ids) == 1
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = mlflow.tracking.MlflowClient(auth_server["uri"])
    run_id = run_ids.pop()
    for key in ("epoch", "train/loss", "val/mask_ap50_95"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(EPOCHS)), key
    assert client.get_run(run_id).info.status == "FINISHED"
    # Asynchronous validation: every epoch validated and journaled once, the validations in flight at
    # the driver kill included; no stage left; weights/best is the best validated epoch.
    records = c.journaled()
    assert sorted(records) == list(range(EPOCHS)) and all("val/mask_ap50_95" in r["metrics"] for r in records.values())
    assert c.in_flight and not list((c.run_dir / STAGE_DIR).glob("epoch-*"))
    fitness = {e: r["metrics"]["val/mask_ap50_95"] for e, r in records.items()}
    best = ckpt.check_complete(c.run_dir / "weights" / "best")["epoch"]
    assert fitness[best] == max(fitness.values()), (best, fitness)

    # The password is nowhere: not in the drivers' output, the run folder, or the server's stores
    # (its own config file holds it, of course); the server required it (the run is there, finished).
    hits = password_leaks(auth_server, tmp_path)
    assert hits == [], f"the password leaked into {hits}"
    assert "@" not in client.get_run(run_id).data.params.get("tracking.tracking_uri", "")
