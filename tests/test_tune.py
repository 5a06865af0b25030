"""pipelines.tune on a real local Ray and a real MLflow server: a 3-trial ASHA search over the
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

# 3 trials x 2 epochs, 2 at a time; lr0 spans two decades so the trials differ after the first epoch.
SEARCH = ["tune.num_trials=3", "tune.max_concurrent_trials=2", "tune.epochs=2", "tune.grace_period=1",
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
    import ray

    from pipelines import tune

    def search():
        return tune.run(_cfg(tmp_path, tiny_snapshot, f"tracking.tracking_uri={mlflow_server}",
                             "tracking.experiment=t-tune", "tune.name=asha"))

    result = search()
    rows = result.rows
    print("\n" + "\n".join(f"{r['trial_id']} {r['status']:>13} epochs {r['epochs_done']} AP {r['best_mask_ap50_95']:.4f} "
                           f"lr0 {r['train.lr0']:.4g} {r['train.optimizer']}" for r in rows))
    assert len(rows) == 3 and all(r["status"] != "error" for r in rows), rows
    assert any(r["status"] == "stopped_early" and r["epochs_done"] < 2 for r in rows), "ASHA stopped no trial"
    # no trial leaves CPUs reserved: a stopped trial's train workers' placement group is freed too
    table = ray.util.placement_group_table()
    groups = {a["placement_group"] for p in (tmp_path / "runs").iterdir() for a in _attempts(p)}
    assert groups and {table[g]["state"] for g in groups} == {"REMOVED"}, {g: table[g]["state"] for g in groups}

    client = mlflow.tracking.MlflowClient(mlflow_server)
    nested = _nested(client, "t-tune", result.parent_run_id)
    assert len(nested) == 3
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
    ("{train.lr00: {uniform: [0.001, 0.01]}}", "tune.space.train.lr00: unknown config key 'train.lr00'. Did you mean 'lr0'?"),
    ("{nokey: {choice: [1]}}", "tune.space.nokey: unknown config key 'nokey'. Valid keys: data,"),  # found by the fuzzer
    ("{train.lr0: {loguniform: [0, 0.01]}}", "tune.space.train.lr0: {loguniform: [0, 0.01]} needs 0 < low"),
    ("{train.lr0: {normal: [0.01, 0.001]}}", "tune.space.train.lr0: 'normal' is not a distribution; write one of {choice"),
    ("{train.epochs: {uniform: [1, 5]}}", "cannot be searched"),
    ("{train.batch_size: {uniform: [4, 16]}}", "can draw 4.0, which the config refuses (train.batch_size: expected an integer"),
    ("{train.optimizer: {choice: [SGD, Lion]}}", "'Lion' is not one of"),
    ("{train.lr0: {uniform: [0.001, 0.01]}}", "train.optimizer=auto ignores train.lr0"),
])
def test_bad_search_space_is_one_line_before_anything_starts(tmp_path, capsys, space, message):
    # the console command's own entry point, in this process (the real console command and its exit
    # status: test_issue_case1_... below)
    from cocoseg.cli import main

    assert main(["tune", f"storage.root={tmp_path}", f"tune.space={space}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
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
    # each bound passes the train job's own checks (cocoseg.config_checks), not only the key's type
    with pytest.raises(ConfigError, match=r"can draw 1.5, which the config refuses \(train.weight_decay: must be in \[0, 1\]"):
        validate_space(load_config(None, ["tune.space={train.weight_decay: {uniform: [0.0, 1.5]}}"]))


def test_more_concurrency_than_the_cluster_can_place_is_refused(tiny_snapshot, tmp_path):
    from pipelines import tune

    cfg = _cfg(tmp_path, tiny_snapshot, "tune.max_concurrent_trials=8", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db")
    with pytest.raises(ConfigError) as info:
        tune.run(cfg)
    message = str(info.value)
    assert "\n" not in message and "tune.max_concurrent_trials=8 needs 8 x (1 worker(s) x 0.5 CPU" in message
    assert "set tune.max_concurrent_trials=2" in message, message
    assert not (tmp_path / "tune").exists() and not (tmp_path / "runs").exists()



# --------------------------------------------------------------------------------------------
# Issue 27: one line before anything starts; failed searches summarised; a search that trained
# nothing does not block its rerun. The real-CLI runs are `extended`; each has a fast cover here.


def test_issue_case1_grace_period_over_epochs_is_one_line_through_the_cli(cli, tmp_path):
    # The shipped tune.yaml has tune.grace_period=3: 2 epochs per trial was ASHA's assertion.
    out = cli("tune", "--config", str(REPO / "pipelines/configs/tune.yaml"), f"storage.root={tmp_path}",
              "tune.epochs=2", "tune.space={train.lr0: {loguniform: [0.001, 0.01]}}", check=False, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "tune.grace_period=3 is more than the epochs each trial trains (tune.epochs=2)" in lines[0]
    assert "set tune.grace_period=2 or less" in lines[0]
    assert not (tmp_path / "tune").exists()


def test_relative_paths_reach_every_trial_absolute(tmp_path, monkeypatch):
    # Fast cover of case 2: what run_search hands the trials (the base config) holds absolute paths.
    from cocoseg.config_checks import prepare
    from cocoseg.tune.trial import trial_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".cocoseg/snapshots/s1").mkdir(parents=True)
    cfg = prepare("tune", load_config(None, ["train.snapshot=.cocoseg/snapshots/s1", "storage.root=.cocoseg",
                                             "tune.epochs=2"]))
    trial = trial_config(cfg, {"train.lr0": 0.01}, "t1")
    assert trial.train.snapshot == str(tmp_path / ".cocoseg/snapshots/s1")
    assert trial.storage.root == str(tmp_path / ".cocoseg") and trial.train.epochs == 2


def test_failed_trials_are_summarised_one_line_per_distinct_error(tmp_path):
    from cocoseg.tune.report import error_line, failure_summary, write_report

    class Wrapped(Exception):  # the shape of Ray's RayTaskError: the original error as .cause
        def __init__(self, cause):
            super().__init__("ray::_Inner.train() (pid=4242, ip=10.0.0.1)\n  File x, line 3\n    boom")
            self.cause = cause

    errors = {"a_00000": Wrapped(ConfigError("snapshot /s has 4 classes but model.num_classes=3; set ...")),
              "a_00001": Wrapped(ConfigError("snapshot /s has 4 classes but model.num_classes=3; set ...")),
              "a_00002": RuntimeError("worker died\n  traceback ...")}
    rows = [{"trial_id": tid, "status": "error", "error": error_line(e), "train.lr0": 0.01} for tid, e in errors.items()]
    assert rows[0]["error"] == "ConfigError: snapshot /s has 4 classes but model.num_classes=3; set ..."
    lines = failure_summary(rows)
    assert lines == ["2 trial(s) failed (a_00000, a_00001): ConfigError: snapshot /s has 4 classes but "
                     "model.num_classes=3; set ...", "1 trial(s) failed (a_00002): RuntimeError: worker died"]

    uri = f"sqlite:///{tmp_path}/m.db"
    parent = tracking.create_run(tracking_uri=uri, experiment="t-fail", run_name="tune-x", params={}, tags={},
                                 artifact_location=str(tmp_path / "art"))
    write_report(rows, {"train.lr0": {"loguniform": [0.001, 0.1]}}, str(tmp_path / "tune"), uri, parent)
    assert (tmp_path / "tune/failures.txt").read_text().splitlines() == lines
    assert not (tmp_path / "tune/metric_vs_params.png").exists()  # nothing to draw: no log-scale crash


def test_a_search_that_trained_nothing_does_not_block_a_rerun_with_other_settings(tmp_path):
    from cocoseg.tune.search import open_search

    uri = f"sqlite:///{tmp_path}/m.db"
    base = [f"storage.root={tmp_path}", "tune.name=s", "tune.epochs=2"]
    first_dir, first = open_search(load_config(None, [*base, "tune.num_trials=3"]), {"train.lr0": {}}, uri)
    (tmp_path / "tune/s/experiment_state-x.json").write_text("{}")  # Tune's state of the crashed search
    again_dir, again = open_search(load_config(None, [*base, "tune.num_trials=4"]), {"train.lr0": {}}, uri)
    assert again_dir == first_dir and again != first  # replaced: a new parent run, the old state gone
    assert not (tmp_path / "tune/s/experiment_state-x.json").exists()

    journal = tmp_path / "runs/s-t1/tracking" / tracking.JOURNAL_NAME  # a trial of it trained an epoch
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"step": 0, "timestamp": 1.0, "metrics": {"train/loss": 1.0}}) + "\n")
    with pytest.raises(ConfigError, match=r"holds a search with other settings \(tune.num_trials differ\)"):
        open_search(load_config(None, [*base, "tune.num_trials=5"]), {"train.lr0": {}}, uri)


def _tune_cli(tmp_path, snapshot, *extra, timeout=900):
    exe = Path(sys.executable).parent / "cocoseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cocoseg"]
    args = [*TINY, *SEARCH[:2], "tune.epochs=1", "tune.grace_period=1", "tracking.system_metrics=false",
            "train.preview_images=0", "train.close_mosaic=0", "storage.root=.cocoseg", "tune.name=rel",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db", f"train.snapshot={snapshot}", *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray
    return subprocess.run([*cmd, "tune", *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


@pytest.mark.slow
@pytest.mark.extended  # covered in make test: test_relative_paths_reach_every_trial_absolute
@pytest.mark.timeout(900)
def test_issue_case2_relative_snapshot_works_in_every_trial(tiny_snapshot, tmp_path):
    import shutil

    shutil.copytree(tiny_snapshot, tmp_path / "snap")  # given relative to the working directory
    out = _tune_cli(tmp_path, "snap", "tune.num_trials=2", "train.optimizer=SGD",
                    "tune.space={train.lr0: {loguniform: [0.001, 0.01]}}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TrainInputError" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    best = load_config(str(tmp_path / ".cocoseg/tune/rel/best.yaml"))
    assert best.train.snapshot == str(tmp_path / "snap") and best.storage.root == str(tmp_path / ".cocoseg")


@pytest.mark.slow
@pytest.mark.extended  # covered in make test: the summary, report and rerun tests above
@pytest.mark.timeout(900)
def test_issue_cases3_4_all_trials_failing_are_summarised_and_the_rerun_is_not_blocked(tiny_snapshot, tmp_path):
    # Every draw of model.num_classes disagrees with the 4-class snapshot: each trial fails in its driver.
    space = "tune.space={model.num_classes: {choice: [3, 5]}}"
    out = _tune_cli(tmp_path, tiny_snapshot, "tune.num_trials=3", "train.optimizer=SGD", space)
    assert out.returncode == 2, out.stderr[-3000:]
    summary = [line for line in out.stdout.splitlines() if line.startswith("tune: ") and "trial(s) failed" in line]
    assert 1 <= len(summary) <= 2 and all("model.num_classes=" in line for line in summary), out.stdout[-3000:]
    assert sum(int(line.split()[1]) for line in summary) == 3
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors and "all 3 trial(s) of the search failed" in errors[-1], out.stderr[-3000:]
    assert "log-scaled" not in out.stderr
    tune_dir = tmp_path / ".cocoseg/tune/rel"
    assert (tune_dir / "failures.txt").read_text().splitlines() == [line[len("tune: "):] for line in summary]
    assert not (tune_dir / "metric_vs_params.png").exists()
    parent = json.loads((tune_dir / "search.json").read_text())["parent_run_id"]
    run = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(parent)
    assert run.info.status == "FAILED" and "model.num_classes=" in run.data.tags["tune.failures"]

    # Case 4: the same tune.name with other settings is not refused (no trial trained an epoch).
    again = _tune_cli(tmp_path, tiny_snapshot, "tune.num_trials=2", "train.optimizer=SGD", space)
    assert "holds a search with other settings" not in again.stderr, again.stderr[-3000:]
    assert "all 2 trial(s) of the search failed" in again.stderr
