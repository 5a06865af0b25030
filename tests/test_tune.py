"""pipelines.tune on a real local Ray and a real MLflow server: a 4-trial ASHA search over the
train job (its MLflow tree, its table and plot, a valid best config), tune.train_best (train,
export, register through the gate), the search state on S3 (moto) and a rerun that restores it,
a resume after a SIGKILLed driver that trains no finished trial again, and the refusals of a bad
search (unknown key, bad distribution, too much concurrency) before any trial starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_support import TINY

from cocoseg import tracking
from cocoseg.config import ConfigError, load_config

mlflow = pytest.importorskip("mlflow")
REPO = Path(__file__).resolve().parents[1]

# 4 trials x 3 epochs, 2 at a time; lr0 spans two decades so the trials differ by the second epoch.
SEARCH = ["tune.num_trials=4", "tune.max_concurrent_trials=2", "tune.epochs=3", "tune.grace_period=1",
          "tune.reduction_factor=2", "tune.seed=3", "train.close_mosaic=1", "tracking.system_metrics=false",
          "train.preview_images=0", "tune.space={train.lr0: {loguniform: [0.0005, 0.05]}, "
          "train.optimizer: {choice: [SGD, AdamW]}}"]


def _cfg(tmp_path, snapshot, *extra):
    return load_config(None, [*TINY, *SEARCH, f"storage.root={tmp_path}", f"train.snapshot={snapshot}", *extra])


def _nested(client, experiment: str, parent: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=100)


def _attempts(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "workers").glob("*.json"))]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_asha_search_tracks_every_trial_and_writes_a_valid_best_config(tiny_snapshot, mlflow_server, tmp_path):
    from pipelines import tune

    def search():
        return tune.run(_cfg(tmp_path, tiny_snapshot, f"tracking.tracking_uri={mlflow_server}",
                             "tracking.experiment=t-tune", "tune.name=asha"))

    result = search()
    rows = result.rows
    print("\n" + "\n".join(f"{r['trial_id']} {r['status']:>13} epochs {r['epochs_done']} AP {r['best_mask_ap50_95']:.4f} "
                           f"lr0 {r['train.lr0']:.4g} {r['train.optimizer']}" for r in rows))
    assert len(rows) == 4 and all(r["status"] != "error" for r in rows), rows
    assert any(r["status"] == "stopped_early" and r["epochs_done"] < 3 for r in rows), "ASHA stopped no trial"

    client = mlflow.tracking.MlflowClient(mlflow_server)
    nested = _nested(client, "t-tune", result.parent_run_id)
    assert len(nested) == 4
    by_trial = {r.data.tags["tune.trial_id"]: r for r in nested}
    for row in rows:
        run = by_trial[row["trial_id"]]
        assert run.data.params["train.lr0"] == str(row["train.lr0"])  # the trial's draw is the run's param
        assert run.data.tags["tune.overrides"] == f"train.lr0={row['train.lr0']!r} train.optimizer=\"{row['train.optimizer']}\""
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/mask_ap50_95"))
        assert steps[:row["epochs_done"]] == list(range(row["epochs_done"])), (row, steps)
        stopped = row["status"] == "stopped_early"
        assert run.data.tags["tune.stopped_early"] == str(stopped).lower()
        assert run.info.status == ("KILLED" if stopped else "FINISHED")
    parent_artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "tune")}
    assert {"tune/results.csv", "tune/results.json", "tune/metric_vs_params.png", "tune/best.yaml"} <= parent_artifacts

    best = load_config(result.best_config)  # a ready train config: full epochs, the best draw
    assert best.train.epochs == 100 and best.train.lr0 == result.best["train.lr0"]
    assert best.train.snapshot == tiny_snapshot and best.tracking.run_name == ""

    # The same command again restores the finished search (Tuner.restore): nothing trains again.
    attempts = {p.name: len(_attempts(p)) for p in (tmp_path / "runs").iterdir()}
    again = search()
    assert sorted(r["trial_id"] for r in again.rows) == sorted(r["trial_id"] for r in rows)
    assert {p.name: len(_attempts(p)) for p in (tmp_path / "runs").iterdir()} == attempts


@pytest.mark.slow
@pytest.mark.extended  # covered in make test: docs/reliability.md, "extended" table
@pytest.mark.timeout(900)
def test_train_best_trains_exports_and_registers_the_best_as_challenger(tiny_snapshot, mlflow_server, tmp_path):
    from pipelines import tune

    result = tune.run(_cfg(tmp_path, tiny_snapshot, f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=t-tune-best",
                           "tune.name=best", "tune.num_trials=1", "tune.epochs=1", "train.epochs=2",
                           "tune.train_best=true", "export.imgsz=64", "registry.model_name=tune-best-test"))
    trained = result.trained
    assert trained["run_dir"].endswith("runs/best-best") and trained["metrics"]["epoch"] == 1  # train.epochs, not tune.epochs
    client = mlflow.tracking.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    # registered through the gate: challenger, or champion where the gate promoted it (the first one bootstraps)
    aliases = set(client.get_model_version("tune-best-test", trained["version"]).aliases)
    assert aliases == ({"champion"} if trained["decision"] in ("bootstrap", "promoted") else {"challenger"}), trained
    assert client.get_run(trained["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert tune.run(_cfg(tmp_path, tiny_snapshot, f"tracking.tracking_uri={mlflow_server}",  # a rerun: once per search
                         "tracking.experiment=t-tune-best", "tune.name=best", "tune.num_trials=1", "tune.epochs=1",
                         "train.epochs=2", "tune.train_best=true", "export.imgsz=64",
                         "registry.model_name=tune-best-test")).trained == trained
    assert len(client.search_model_versions("name='tune-best-test'")) == 1


@pytest.mark.slow
@pytest.mark.extended  # covered in make test: docs/reliability.md, "extended" table
@pytest.mark.timeout(900)
def test_search_state_on_s3_and_a_rerun_resumes_it(tiny_snapshot, s3_bucket, tmp_path, capsys):
    """storage.root=s3://: the search state, runs and best.yaml live in the bucket; the same call
    again restores the finished search (Tuner.restore) and trains nothing."""
    from cocoseg import storage
    from pipelines import tune

    def search():
        return tune.run(_cfg(s3_bucket, tiny_snapshot, "tune.name=s3", "tune.num_trials=1", "tune.epochs=1",
                             f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"))

    first = search()
    assert first.best_config == f"{s3_bucket}/tune/s3/best.yaml" and storage.exists(first.best_config)
    assert storage.list_files(f"{s3_bucket}/runs/s3-{first.best['trial_id']}/workers")
    capsys.readouterr()
    again = search()
    assert [r["trial_id"] for r in again.rows] == [first.best["trial_id"]]
    assert len(storage.list_files(f"{s3_bucket}/runs/s3-{first.best['trial_id']}/workers")) == 1  # not trained again


def _driver(tmp_path: Path, snapshot: str, mlflow_server: str, log: Path) -> subprocess.Popen:
    # 3 trials x 2 epochs: the kill lands while one trial is in flight and one has not started
    cmd = [sys.executable, "-m", "pipelines.tune", *TINY, *SEARCH, "tune.num_trials=3", "tune.epochs=2",
           f"storage.root={tmp_path}",
           f"train.snapshot={snapshot}", f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=t-tune-kill",
           "tune.name=killed"]
    env = {**os.environ, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finished_runs(root: Path) -> dict[str, float]:
    """Trial run folders whose training finished -> when (the run record's mtime)."""
    out = {}
    for record in root.glob("runs/killed-*/tracking/run.json"):
        if json.loads(record.read_text()).get("status") == "FINISHED":
            out[record.parents[1].name] = record.stat().st_mtime
    return out


@pytest.mark.slow
# `make test-all` only: test_search_state_on_s3_and_a_rerun_resumes_it (in `make test`) restores a
# search with the same command and checks that no finished trial trains again.
@pytest.mark.extended
@pytest.mark.timeout(1200)
def test_sigkilled_driver_resumes_without_rerunning_finished_trials(tiny_snapshot, mlflow_server, tmp_path):
    log = tmp_path / "driver.log"
    proc = _driver(tmp_path, tiny_snapshot, mlflow_server, log)
    deadline = time.time() + 600
    while not _finished_runs(tmp_path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, f"the driver ended before any trial finished:\n{log.read_text()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (its private Ray)
    proc.wait(30)
    killed_at = time.time()
    finished = _finished_runs(tmp_path)
    time.sleep(2)  # let the killed Ray's processes go

    again = _driver(tmp_path, tiny_snapshot, mlflow_server, log)
    assert again.wait(900) == 0, log.read_text()[-5000:]
    text = log.read_text()
    print("\n".join(line for line in text.splitlines() if line.startswith(("trial ", "best trial")) or "resuming" in line))
    print(f"killed at {killed_at:.1f}; finished before the kill: {sorted(finished)}")
    assert "resuming the search" in text
    results = json.loads((tmp_path / "tune" / "killed" / "results.json").read_text())
    assert len(results) == 3 and all(r["status"] in ("completed", "stopped_early") for r in results), results
    for name in finished:  # trained before the kill: no worker of it started again
        assert all(a["time"] < killed_at for a in _attempts(tmp_path / "runs" / name)), name
        journal = tracking.read_journal(tracking.journal_uri(str(tmp_path / "runs" / name)))
        assert [r["step"] for r in journal] == [0, 1], name
    client = mlflow.tracking.MlflowClient(mlflow_server)
    parent = json.loads((tmp_path / "tune" / "killed" / "search.json").read_text())["parent_run_id"]
    assert len(_nested(client, "t-tune-kill", parent)) == 3
    load_config(str(tmp_path / "tune" / "killed" / "best.yaml"))


# --------------------------------------------------------------------------------------------
# Refused before any trial starts


@pytest.mark.parametrize("space, message", [
    ("{train.lr00: {uniform: [0.001, 0.01]}}", "unknown config key 'train.lr00'. Did you mean 'lr0'?"),
    ("{train.lr0: {loguniform: [0, 0.01]}}", "tune.space.train.lr0: {loguniform: [0, 0.01]} needs 0 < low"),
    ("{train.lr0: {normal: [0.01, 0.001]}}", "tune.space.train.lr0: 'normal' is not a distribution; write one of {choice"),
    ("{train.epochs: {uniform: [1, 5]}}", "cannot be searched"),
    ("{train.batch_size: {uniform: [4, 16]}}", "can draw 4.0, which the config refuses (train.batch_size: expected an integer"),
    ("{train.optimizer: {choice: [SGD, Lion]}}", "'Lion' is not one of"),
    ("{train.lr0: {uniform: [0.001, 0.01]}}", "train.optimizer=auto ignores train.lr0"),
])
def test_bad_search_space_is_one_line_before_anything_starts(cli, tmp_path, space, message):
    out = cli("tune", f"storage.root={tmp_path}", f"tune.space={space}", check=False, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "tune").exists() and not (tmp_path / "runs").exists()


def test_space_forms_and_domains():
    from ray import tune as ray_tune

    from cocoseg.tune.space import tune_domains, validate_space

    cfg = load_config(None, ["train.optimizer=SGD", "tune.space={train.momentum: {uniform: [0.8, 0.9]}, train.close_mosaic: {randint: [0, 3]}, "
                             "model.variant: {choice: [n, s]}}", "tune.space.train.lr0={loguniform: [0.001, 0.01]}"])
    flat = validate_space(cfg)
    assert set(flat) == {"train.lr0", "train.momentum", "train.close_mosaic", "model.variant"}
    domains = tune_domains(flat)
    assert isinstance(domains["train.lr0"], ray_tune.search.sample.Float)
    assert domains["train.close_mosaic"].lower == 0 and domains["train.close_mosaic"].upper == 3
    with pytest.raises(ConfigError, match="tune.space is empty"):
        validate_space(load_config(None, []))


def test_more_concurrency_than_the_cluster_can_place_is_refused(tiny_snapshot, tmp_path):
    from pipelines import tune

    cfg = _cfg(tmp_path, tiny_snapshot, "tune.max_concurrent_trials=8", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db")
    with pytest.raises(ConfigError) as info:
        tune.run(cfg)
    message = str(info.value)
    assert "\n" not in message and "tune.max_concurrent_trials=8 needs 8 x (1 worker(s) x 0.5 CPU" in message
    assert "set tune.max_concurrent_trials=2" in message, message
    assert not (tmp_path / "tune").exists() and not (tmp_path / "runs").exists()

