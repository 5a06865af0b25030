"""A training worker process is SIGKILLed mid-run (in epoch 2 of 4): the run still completes
every epoch, resumes from the last registered checkpoint, and MLflow holds each epoch once.

The killer thread reads the worker's pid from the run's ``workers/attempt-*.json`` record (a
process of this test's own private Ray) and waits until epoch 1's metrics are journaled plus a
few seconds, so the kill lands inside epoch 2, after epoch 1's checkpoint was registered.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from _train_support import TINY, tiny_snapshot_fixture  # noqa: F401 (registers the fixture)

from cocoseg import storage, tracking
from cocoseg.config import load_config

mlflow = pytest.importorskip("mlflow")


def _workers(run_dir: str) -> list[dict]:
    return [json.loads(storage.read_text(e.uri)) for e in storage.list_files(storage.join(run_dir, "workers"))]


def _killer(run_dir: str, timeline: list[tuple[float, str]], stop: threading.Event, delay_s: float = 4.0) -> None:
    journal = tracking.journal_uri(run_dir)
    while not stop.is_set():
        steps = [r["step"] for r in tracking.read_journal(journal)]
        if 1 in steps:
            timeline.append((time.time(), "epoch 1 journaled (its checkpoint is being registered)"))
            break
        time.sleep(0.5)
    stop.wait(delay_s)
    victim = next(w for w in _workers(run_dir) if w["rank"] == 1 and w["start_epoch"] == 0)
    os.kill(victim["pid"], signal.SIGKILL)
    timeline.append((time.time(), f"SIGKILL rank 1 (pid {victim['pid']}) during epoch 2"))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of compute on 2 shared cores; generous for loaded CI hosts
def test_sigkilled_worker_resumes_from_checkpoint_and_logs_each_epoch_once(tiny_snapshot, mlflow_server, tmp_path):
    from pipelines import train

    cfg = load_config(None, [*TINY, f"storage.root={tmp_path}", f"train.snapshot={tiny_snapshot}",
                             "train.num_workers=2", "train.epochs=4", "train.close_mosaic=0", "train.max_failures=1",
                             f"tracking.tracking_uri={mlflow_server}", "tracking.run_name=ft",
                             "tracking.experiment=t-fault", "tracking.system_metrics=false"])
    run_dir = storage.join(str(tmp_path), "runs", "ft")
    timeline: list[tuple[float, str]] = [(time.time(), "fit starts")]
    stop = threading.Event()
    killer = threading.Thread(target=_killer, args=(run_dir, timeline, stop), daemon=True)
    killer.start()
    try:
        result = train.run(cfg)
    finally:
        stop.set()
        killer.join(30)
    timeline.append((time.time(), "fit returned"))
    attempts = sorted(_workers(run_dir), key=lambda w: (w["time"], w["rank"]))
    for w in attempts:
        timeline.append((w["time"], f"rank {w['rank']} (pid {w['pid']}) starts at epoch {w['start_epoch']}"))
    for r in tracking.read_journal(tracking.journal_uri(run_dir)):
        timeline.append((r["timestamp"], f"epoch {r['step']} metrics journaled"))
    t0 = timeline[0][0]
    print("\nfault-tolerance timeline:\n" + "\n".join(f"  {t - t0:7.1f} s  {what}" for t, what in sorted(timeline)))

    assert any("SIGKILL" in what for _, what in timeline), "the worker was never killed"
    restarts = [w for w in attempts if w["start_epoch"] > 0]
    assert {w["rank"] for w in restarts} == {0, 1}, "the worker group was not restarted"
    # Resumed from a checkpoint (epoch 1's, or epoch 0's if the kill beat its registration).
    assert {w["start_epoch"] for w in restarts} <= {1, 2}
    client = mlflow.tracking.MlflowClient(mlflow_server)
    for key in ("epoch", "train/loss", "val/mask_ap50_95"):
        assert sorted(m.step for m in client.get_metric_history(result.mlflow_run_id, key)) == [0, 1, 2, 3], key
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert result.metrics["epoch"] == 3
