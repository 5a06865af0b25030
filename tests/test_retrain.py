"""Scheduled retraining through the real jobs: the first round trains, exports, registers and
crowns a champion; a second round over the unchanged source is a no-op that starts no training;
a changed source trains again, warm-started from the champion, and the gate decides."""

from __future__ import annotations

import pytest
from _train_support import TINY

from cocoseg.config import load_config
from cocoseg.ingest.synthetic import write_synthetic_coco


def _cfg(root, source, *extra):
    return load_config(None, [*TINY, f"storage.root={root}", f"ingest.source={source}", "train.epochs=1",
                              "scaling.num_workers=1", "train.close_mosaic=0", "export.imgsz=64",
                              f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                              "registry.model_name=retrain-test", *extra])


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
    warm = list((tmp_path / "warm-start").iterdir())
    assert [p.name for p in warm] == [f"retrain-test-v{first['version']}"]
    assert (warm[0] / "model.safetensors").stat().st_size > 1_000_000
    assert len(client.search_model_versions("name='retrain-test'")) == 2
