"""``make demo``'s job (``python -m pipelines.demo``) end to end, shortened: synthesise -> ingest
-> train -> export -> register, on the session's local Ray and MLflow on SQLite under the root.
It must end with a ``champion`` that loads from the registry."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of compute on 2 shared cores; generous for loaded CI hosts
def test_demo_ends_with_a_registered_champion(ray_local, tmp_path, capsys, monkeypatch):
    from pipelines import demo

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "root"
    overrides = ["train.epochs=2", "train.close_mosaic=2", "model.imgsz=64", "export.imgsz=64",
                 "train.cpus_per_worker=0.5", "train.data_actors=1", "train.data_cpus_per_actor=0.5",
                 "train.threads_per_worker=1", "tracking.system_metrics=false"]
    assert demo.main(["--root", str(root), "--images", "24", *overrides]) == 0
    out = capsys.readouterr().out
    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    assert "demo finished:" in out and f"--backend-store-uri {uri}" in out
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("cocoseg-yolov8-seg", "champion")
    assert f"cocoseg-yolov8-seg v{champion.version}" in out
    assert (root / "snapshots").is_dir() and any((root / "exports").iterdir())
