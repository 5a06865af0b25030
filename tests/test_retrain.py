"""Scheduled retraining through the real jobs: the first round trains, exports (ONNX and INT8 ONNX),
registers and crowns a champion; a second round over the unchanged source is a no-op that starts no
training; a changed source says what changed (diff.json, the champion on the new images), trains
again, warm-started from the champion, and the evidence gate decides, the champion re-evaluated on
the new snapshot (the fast cover of tests/test_registry_served.py)."""

from __future__ import annotations

import pytest
from _train_support import TINY

from cocoseg.config import load_config
from cocoseg.ingest.synthetic import write_synthetic_coco


def _cfg(root, source, *extra):
    return load_config(None, [*TINY, f"storage.root={root}", f"ingest.source={source}", "train.epochs=1",
                              "scaling.num_workers=1", "train.close_mosaic=0", "export.imgsz=64",
                              f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                              "registry.model_name=retrain-test", "export.formats=[onnx,onnx-int8]",
                              "export.calibration_images=4", "registry.bootstrap_resamples=200", *extra])


@pytest.mark.slow
def test_retrain_trains_once_then_skips_then_warm_starts(ray_local, tmp_path):
    from mlflow import MlflowClient

    from pipelines import retrain

    source = tmp_path / "src"
    write_synthetic_coco(str(source), images=24, size=(96, 80), seed=3, val_fraction=0.25, max_instances=2)
    cfg = _cfg(tmp_path, source)

    first = retrain.run(cfg)
    assert first["action"] == "trained" and first["decision"] == "bootstrap", first
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri, registry_uri=cfg.tracking.tracking_uri)
    champion = client.get_model_version_by_alias("retrain-test", "champion")
    assert str(champion.version) == str(first["version"]) and first["snapshot"] in champion.tags["data_snapshot"]

    second = retrain.run(cfg)
    assert second["action"] == "skipped" and second["champion"] == str(first["version"]), second
    assert len(client.search_model_versions("name='retrain-test'")) == 1  # nothing registered
    assert len(list((tmp_path / "runs").iterdir())) == 1  # and no training run started

    # New source data: a new snapshot, a new run that starts from the champion's weights.
    write_synthetic_coco(str(source), images=28, size=(96, 80), seed=4, val_fraction=0.25, max_instances=2)
    third = retrain.run(cfg)
    assert third["action"] == "trained" and third["snapshot"] != first["snapshot"], third
    assert third["decision"] in ("promoted", "rejected")
    # ... and says what changed: 24 -> 28 images under the same names, redrawn (seed 3 -> 4), some
    # moved between splits; the champion was scored on the new and changed images before training
    diff = third["diff"]
    assert (tmp_path / "retrain" / third["snapshot"] / "diff.json").is_file()
    assert diff["added"] > 0 and diff["changed"] > 0 and diff["added"] + diff["changed"] <= 28
    assert sum(diff["instances_after"].values()) > 0 and set(diff["instances_after"]) == set(diff["instances_before"])
    scored = diff["champion_on_new"]["by_split"]
    assert diff["champion_on_new"]["version"] == str(first["version"])
    assert sum(v["images"] for v in scored.values()) == diff["added"] + diff["changed"]
    assert "diff" not in first  # a first round has no champion to compare with
    tags = client.get_model_version("retrain-test", third["version"]).tags
    assert tags["eval.matches"] == "true" and tags["gate.champion_reevaluated"] == "true"  # champion on the new split
    assert tags["served.formats"] == "onnx,onnx-int8" and "metric.served/onnx-int8/mask_ap50_95" in tags
    warm = list((tmp_path / "warm-start").iterdir())
    assert [p.name for p in warm] == [f"retrain-test-v{first['version']}"]
    assert (warm[0] / "model.safetensors").stat().st_size > 1_000_000
    assert len(client.search_model_versions("name='retrain-test'")) == 2
