"""pipelines.train end to end on a real local Ray, a real MLflow server and a synthetic snapshot,
plus the refusals of bad input before any worker starts."""

from __future__ import annotations

import json

import pytest
from _train_support import ASYNC_VAL, TINY

from cocoseg import storage, tracking
from cocoseg.config import ConfigError, load_config
from cocoseg.model.weights import load_checkpoint
from cocoseg.utils import UserError

mlflow = pytest.importorskip("mlflow")


def _cfg(tmp_path, snapshot, *extra):
    return load_config(None, [*TINY, f"storage.root={tmp_path}", f"train.snapshot={snapshot}", *extra])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of compute on 2 shared cores; generous for loaded CI hosts
def test_two_workers_train_checkpoint_and_track(tiny_snapshot, mlflow_server, tmp_path):
    """Also the wall-clock budget (engine/budget.py) through the job: train.epochs 3, epochs of
    1000 s on the injected clock (tests/_budget_clock.py) and 2600 s: after epoch 0 the run plans
    2 epochs, so epoch 1 is the last (validated, waited for) and closes mosaic."""
    import _budget_clock
    from ray import cloudpickle

    from pipelines import train

    cloudpickle.register_pickle_by_value(_budget_clock)  # the workers do not have tests/ on their path
    client = mlflow.tracking.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("t-pipe") or client.get_experiment(client.create_experiment("t-pipe"))
    parent = client.create_run(exp.experiment_id, run_name="pipeline").info.run_id
    cfg = _cfg(tmp_path, tiny_snapshot, *ASYNC_VAL, "scaling.num_workers=2", "train.epochs=3", "train.close_mosaic=1",
               f"train.time_budget_h={2600 / 3600}", f"tracking.tracking_uri={mlflow_server}",
               "tracking.experiment=t-pipe", "tracking.run_name=pipe")
    result = train.run(cfg, parent_run_id=parent, clock=_budget_clock.StepClock(1000.0))

    # MLflow: one nested run, params = resolved config, tags, each epoch's metrics exactly once.
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["variant"] == "n" and run.data.tags["snapshot_id"] in tiny_snapshot
    assert run.data.params["scaling.num_workers"] == "2" and run.data.params["model.imgsz"] == "64"
    # the default recipe (train.optimizer=auto) as resolved for this run, logged as recipe.* params
    from cocoseg.engine.build import resolve_recipe

    recipe = resolve_recipe(cfg, world_size=2, train_images=36)
    assert run.data.params["train.optimizer"] == "auto" and run.data.params["recipe.name"] == recipe.name == "AdamW"
    assert float(run.data.params["recipe.lr0"]) == pytest.approx(recipe.lr0)
    for key in ("train/loss_box", "train/loss_mask", "train/loss_cls", "train/loss_dfl", "lr/weight",
                "val/box_ap50_95", "val/mask_ap50_95", "val/mask_ap50", "train/images_per_s", "train/epoch_time_s"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1], key
    assert any(k.startswith("system/") for k in run.data.metrics), "no system metrics"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "weights", "config.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/losses.png", "plots/metrics.png", "plots/val_predictions.png"} <= plots
    weights = {a.path for a in client.list_artifacts(run.info.run_id, "weights/last")}
    assert "weights/last/model.safetensors" in weights and "weights/last/model_card.json" in weights

    # Storage: best and last are loadable cocoseg checkpoints whose cards describe the run.
    model, card = load_checkpoint(result.last_weights, variant="n", num_classes=4)
    assert card.metrics["epoch"] == 1.0 and card.data_snapshot in tiny_snapshot and card.imgsz == 64
    load_checkpoint(result.best_weights, variant="n", num_classes=4)
    assert set(result.metrics) >= {"val/mask_ap50_95", "train/loss"} and result.metrics["epoch"] == 1
    journal = tracking.read_journal(tracking.journal_uri(result.run_dir))
    assert [r["step"] for r in journal] == [0, 1]
    workers = [json.loads(storage.read_text(e.uri)) for e in storage.list_files(storage.join(result.run_dir, "workers"))]
    assert sorted(w["rank"] for w in workers) == [0, 1] and {w["world_size"] for w in workers} == {2}
    _check_budget(cfg, result, journal)


def _check_budget(cfg, result, journal) -> None:
    """The budget's journal: planned 3 (nothing timed), then 2; mosaic closed in epoch 1 (the last
    of 2; under the 3-epoch plan it was epoch 2); epoch 1's LR at the 2-epoch schedule's end."""
    from cocoseg.engine.budget import BUDGET_FILE
    from cocoseg.engine.build import resolve_recipe
    from cocoseg.engine.optim import lr_factor

    doc = storage.read_json(storage.join(result.run_dir, "tracking", BUDGET_FILE))
    assert [(p["before_epoch"], p["epochs"]) for p in doc["plans"]] == [(0, 3), (1, 2)]
    assert doc["presets"] == {"0": "yolov8", "1": "yolov8-close"} and doc["spent_s"] == 3000.0
    lr0 = resolve_recipe(cfg, world_size=2, train_images=36).lr0
    assert journal[1]["metrics"]["lr/weight"] == pytest.approx(lr0 * lr_factor(1, 2, cfg.train.lrf, cfg.train.cos_lr))


@pytest.mark.parametrize("override, message", [
    ("train.snapshot={root}/snapshots/nope", "does not exist"),
    ("train.snapshot={root}", "has no _manifest.json"),
    ("model.variant=q", "model.variant: 'q' is not one of"),
    ("train.epochz=3", "unknown config key 'train.epochz'. Did you mean 'epochs'"),
])
def test_bad_input_is_refused_before_ray_starts(tmp_path, override, message):
    from pipelines import train

    (tmp_path / "stub").mkdir()
    with pytest.raises((ConfigError, UserError), match=message):
        train.run(_cfg(tmp_path, f"{tmp_path}/stub", override.format(root=tmp_path)))


def _manifest_copy(snapshot: str, dest, edit) -> str:
    manifest = json.loads(storage.read_text(storage.join(snapshot, "_manifest.json")))
    edit(manifest)
    storage.write_text(str(dest / "_manifest.json"), json.dumps(manifest))
    return str(dest)


def test_unknown_schema_and_empty_split_are_refused(tiny_snapshot, tmp_path):
    from pipelines import train

    future = _manifest_copy(tiny_snapshot, tmp_path, lambda m: m.update(schema_version=99))
    with pytest.raises(UserError, match="schema_version 99 is not supported"):
        train.run(_cfg(tmp_path, future))
    (tmp_path / "empty").mkdir()
    empty = _manifest_copy(tiny_snapshot, tmp_path / "empty", lambda m: m["splits"]["val"].update(images=0))
    with pytest.raises(UserError, match="the 'val' split is empty"):
        train.run(_cfg(tmp_path, empty))


@pytest.mark.parametrize("extra, message", [
    (["scaling.num_workers=64"], "cannot be placed"),
    (["scaling.use_gpu=true"], "needs 1 GPUs, the cluster has 0"),
    (["scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD"], "only 1 node"),
    (["data.actors=8"], "exceed the cluster's"),
])
def test_unplaceable_worker_groups_are_refused(tiny_snapshot, tmp_path, extra, message):
    from pipelines import train

    with pytest.raises(UserError, match=message):
        train.run(_cfg(tmp_path, tiny_snapshot, *extra))


def test_cli_train_refuses_a_missing_snapshot_with_exit_2(cli, tmp_path):
    out = cli("train", f"storage.root={tmp_path}", f"train.snapshot={tmp_path}/snapshots/none", check=False)
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "cocoseg ingest" in out.stderr
    assert "Traceback" not in out.stderr
