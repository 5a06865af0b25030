"""Asynchronous validation (cocoseg/engine/validation.py) on a real local Ray: each staged epoch is
validated by a Ray task of its own (here a scripted one, tests/_validation_tasks.py, whose outcome
per epoch is set by the test); rank 0's collector logs each result at its epoch, picks the best by
validated fitness whatever the order the tasks finish in, retries a failed task once and records
it as failed, and a resume validates again exactly the epochs a kill interrupted.

The full path (the evaluate job's Ray Data pool on the staged weights inside the train run) is
covered by tests/test_train_pipeline.py and tests/test_chaos.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from cocoseg import tracking
from cocoseg.config import load_config
from cocoseg.engine import checkpoint as ckpt
from cocoseg.engine.build import RunInfo
from cocoseg.engine.ema import ModelEMA
from cocoseg.engine.validation import Validations, staged_epochs
from cocoseg.model import build_model
from cocoseg.model.weights import ModelCard, read_card

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """One local checkpoint folder per epoch 0..5 (the same small model; the marker names the epoch)."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    net = build_model("n", num_classes=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    card = ModelCard(variant="n", num_classes=2, class_names=["a", "b"], imgsz=64)
    for epoch in range(6):
        ckpt.save_checkpoint(root / f"e{epoch}", model=net, ema=ModelEMA(net), optimizer=opt, scaler=None, epoch=epoch,
                             micro_step=epoch, best_fitness=-1.0, config={}, card=card)
    return root


def _validations(run_dir: Path, script: dict, logger: tracking.RunLogger) -> Validations:
    import _validation_tasks
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(_validation_tasks)  # the workers do not have tests/ on their path

    (run_dir / "script.json").write_text(json.dumps({str(k): v for k, v in script.items()}))
    cfg = load_config(None, ["validation.cpus_per_actor=0.25", "validation.concurrency=4"])
    run = RunInfo(run_dir=str(run_dir), mlflow_run_id="", batches_per_epoch=1, recipe=None, snapshot_id="s",
                  snapshot_uri="unused", class_names=("a", "b"), category_ids=(1, 2))
    plots: list[tuple[int, bool]] = []
    v = Validations(cfg, run, log_epoch=logger.log_epoch, logged={r["step"]: r["metrics"] for r in logger.records},
                    on_result=lambda epoch, metrics, p, is_best: plots.append((epoch, is_best)), task=ray.remote(_validation_tasks.scripted))
    v.plots = plots
    return v


def _logger(run_dir: Path) -> tracking.RunLogger:  # offline: the journal only (no MLflow server needed)
    return tracking.RunLogger(tracking_uri="", run_id="", journal=tracking.journal_uri(str(run_dir)), system_metrics=False)


def _release(run_dir: Path, v: Validations, *epochs: int) -> None:
    """Let the gated tasks of ``epochs`` finish, one after the other, each logged before the next."""
    for epoch in epochs:
        (run_dir / "gates").mkdir(exist_ok=True)
        (run_dir / "gates" / f"epoch-{epoch}").touch()
        deadline = time.time() + 240
        while epoch not in v.results and time.time() < deadline:
            time.sleep(0.05)
        assert epoch in v.results, f"epoch {epoch}'s validation did not arrive"


def test_metrics_land_on_their_epoch_and_best_is_the_best_validated_even_out_of_order(ray_local, saved, tmp_path):
    # all four run at once and finish in the order 1, 3, 2, 0: epoch 2 is the best and arrives
    # after 1 and 3, epoch 0 (second best) last; epoch 4 fails twice (retried once); epoch 5 is
    # not validated (train.val_every)
    script = {0: {"gate": True, "fitness": 0.30}, 1: {"gate": True, "fitness": 0.10},
              2: {"gate": True, "fitness": 0.50}, 3: {"gate": True, "fitness": 0.20},
              4: {"error": "actor lost"}}
    logger = _logger(tmp_path)
    v = _validations(tmp_path, script, logger)
    try:
        for epoch in range(6):
            v.expect(epoch)
            v.stage(epoch, {"train/loss": 10.0 + epoch}, str(saved / f"e{epoch}") if epoch < 5 else None)
        _release(tmp_path, v, 1, 3, 2, 0)
        v.wait(timeout=240)
    finally:
        v.close()

    records = {r["step"]: r for r in tracking.read_journal(tracking.journal_uri(str(tmp_path)))}
    assert sorted(records) == [0, 1, 2, 3, 4, 5]
    for epoch, r in records.items():
        assert r["metrics"]["train/loss"] == 10.0 + epoch  # the epoch's own train metrics ...
        if epoch in (0, 1, 2, 3):  # ... beside its own validation's
            assert r["metrics"]["val/mask_ap50_95"] == script[epoch]["fitness"], epoch
    assert records[4]["metrics"]["val/failed"] == 1.0 and "actor lost" in records[4]["validation_error"]
    assert "val/mask_ap50_95" not in records[4]["metrics"] and "val/mask_ap50_95" not in records[5]["metrics"]
    assert len(list((tmp_path / "attempts").glob("epoch-4-*"))) == 2  # retried once, then recorded
    assert len(list((tmp_path / "attempts").glob("epoch-2-*"))) == 1

    # out of order: 1 and 3 arrived before 2, and 0 after it; the best stays epoch 2
    arrival = [e for e, _ in v.plots]
    assert arrival == [1, 3, 2, 0], arrival
    assert v.best_epoch == 2 and v.best == 0.50
    best = tmp_path / "weights" / "best"
    assert ckpt.check_complete(best, hashes=True)["epoch"] == 2
    assert read_card(str(best)).metrics["val/mask_ap50_95"] == 0.50  # the card carries the validated metrics
    running, expected = -1.0, []
    for epoch in arrival:  # "best" is decided as each result arrives: a new maximum or not
        expected.append(script[epoch]["fitness"] > running)
        running = max(running, script[epoch]["fitness"])
    assert [is_best for _, is_best in v.plots] == expected
    assert staged_epochs(str(tmp_path)) == {}  # every stage removed once logged


def test_resume_validates_each_interrupted_epoch_once(ray_local, saved, tmp_path):
    """A first attempt stages epochs 0-2 and is cut off while their validations run (its collector
    stops, nothing of theirs is logged); epoch 0's record had been logged. The next attempt resumes
    at epoch 2 (epoch 2 is trained again): epoch 1 is validated again, epoch 2's stage is dropped,
    and every epoch ends up in the journal exactly once, with its validation."""
    slow = {0: {"fitness": 0.2}, 1: {"gate": True, "fitness": 0.1}, 2: {"gate": True, "fitness": 0.3}}
    first = _validations(tmp_path, slow, _logger(tmp_path))
    for epoch in range(3):
        first.expect(epoch)
        first.stage(epoch, {"train/loss": 1.0 + epoch}, str(saved / f"e{epoch}"))
    deadline = time.time() + 120
    while 0 not in first.results and time.time() < deadline:  # epoch 0 logged, 1 and 2 in flight
        time.sleep(0.1)
    first.close()  # the kill: its tasks are cancelled, nothing more of this attempt is logged
    assert set(staged_epochs(str(tmp_path))) == {1, 2}

    fast = {1: {"fitness": 0.1}, 2: {"fitness": 0.3}}  # the gates of 1 and 2 are never opened: in flight
    logger = _logger(tmp_path)
    second = _validations(tmp_path, fast, logger)
    try:
        assert second.resume(next_epoch=2) == [1]
        second.expect(2)  # epoch 2 trained again, validated again
        second.stage(2, {"train/loss": 3.5}, str(saved / "e2"))
        second.wait(timeout=120)
    finally:
        second.close()
    records = tracking.read_journal(tracking.journal_uri(str(tmp_path)))
    assert [r["step"] for r in records] == [0, 1, 2]
    assert [r["metrics"]["val/mask_ap50_95"] for r in records] == [0.2, 0.1, 0.3]
    assert records[2]["metrics"]["train/loss"] == 3.5  # the redone epoch's metrics, not the first attempt's
    assert second.best_epoch == 2 and staged_epochs(str(tmp_path)) == {}
    assert ckpt.check_complete(tmp_path / "weights" / "best")["epoch"] == 2
