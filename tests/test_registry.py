"""Registry: export -> register -> aliases -> load models:/NAME@champion -> predict, against a real
``mlflow server`` (SQLite) on 127.0.0.1; the gate, promote, rollback and all-or-nothing failures."""

from __future__ import annotations

import base64
import pickle
import shutil
import socket
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from export_helpers import encoded_png, make_export

from cocoseg.bundle import BundleError
from cocoseg.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    alias_version,
    connect,
    decide,
    download,
    mlflow_at,
    promote,
    register_export,
    rollback,
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Three exports of the same stand-in architecture with different mask AP50-95."""
    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("exports")
    return {"base": make_export(root / "base", metric=0.30, seed=0),
            "worse": make_export(root / "worse", metric=0.25, seed=1),
            "better": make_export(root / "better", metric=0.40, seed=2)}


def _name() -> str:
    return f"seg-{uuid.uuid4().hex[:8]}"


def _versions(client, name: str) -> list[str]:
    return sorted(mv.version for mv in client.search_model_versions(f"name='{name}'"))


def test_decide_rule():
    assert decide("m", 0.3, None, 0.0).decision == "bootstrap"
    assert decide("m", 0.32, 0.30, 0.01, champion_version="1").decision == "promoted"
    tie = decide("m", 0.30, 0.30, 0.0, champion_version="1")
    assert tie.decision == "rejected" and "a tie is not a promotion" in tie.reason
    short = decide("m", 0.305, 0.30, 0.01, champion_version="1")
    assert short.decision == "rejected" and "short by" in short.reason and not short.promote
    other = decide("m", 0.9, 0.3, 0.0, champion_version="1", snapshots=("a", "b"))
    assert other.decision == "rejected" and "not comparable" in other.reason


def test_register_gate_promote_rollback_and_predict(mlflow_server, exports):
    name = _name()
    client = connect(mlflow_server)
    first = register_export(exports["base"], name=name, tracking_uri=mlflow_server)
    assert first.decision.decision == "bootstrap"
    assert alias_version(client, name, CHAMPION).version == first.version

    # The champion serves predictions from the ONNX for an encoded image.
    import mlflow

    with mlflow_at(mlflow_server):
        model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    image = base64.b64encode(encoded_png(80, 48)).decode()
    out = model.predict(pd.DataFrame({"image": [image]}), params={"conf": 0.3})
    assert len(out) == 1 and out[0]["width"] == 80 and out[0]["height"] == 48
    rec = out[0]
    assert len(rec["boxes_xyxy"]) == len(rec["scores"]) == len(rec["masks_rle"]) > 0
    assert all(0 <= b[0] <= b[2] <= 80 and 0 <= b[1] <= b[3] <= 48 for b in rec["boxes_xyxy"])
    assert all(sum(m["counts"]) == 80 * 48 and m["size"] == [48, 80] for m in rec["masks_rle"])

    worse = register_export(exports["worse"], name=name, tracking_uri=mlflow_server, margin=0.01)
    mv = client.get_model_version(name, worse.version)
    assert worse.decision.decision == "rejected"
    assert mv.tags["gate.decision"] == "rejected" and mv.tags["gate.champion_version"] == first.version
    assert float(mv.tags["gate.challenger_value"]) == 0.25 and float(mv.tags["gate.champion_value"]) == 0.30
    assert alias_version(client, name, CHAMPION).version == first.version
    assert alias_version(client, name, CHALLENGER).version == worse.version

    better = register_export(exports["better"], name=name, tracking_uri=mlflow_server, margin=0.01)
    assert better.decision.decision == "promoted"
    champ = alias_version(client, name, CHAMPION)
    assert champ.version == better.version and champ.tags["previous_champion"] == first.version
    for key in ("data_snapshot", "train_run_id", "git_commit", "variant", "onnx_sha256", "trt.skipped"):
        assert champ.tags[key], key

    assert rollback(client, name) == (better.version, first.version)
    assert alias_version(client, name, CHAMPION).version == first.version
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(client, name)
    assert promote(client, name, worse.version) == first.version
    assert alias_version(client, name, CHAMPION).version == worse.version
    with pytest.raises(RegistryError, match="has no version 99"):
        promote(client, name, "99")


def test_loading_never_unpickles(mlflow_server, exports, monkeypatch, tmp_path):
    import cloudpickle
    import mlflow

    name = _name()
    reg = register_export(exports["base"], name=name, tracking_uri=mlflow_server)
    local = Path(download(mlflow_server, f"models:/{name}/{reg.version}", str(tmp_path)))
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".pth")]
    assert "model_code_path" in (local / "MLmodel").read_text()

    def refuse(*_a, **_k):
        raise AssertionError("something was unpickled while loading the model")

    for mod in (pickle, cloudpickle):
        monkeypatch.setattr(mod, "load", refuse)
        monkeypatch.setattr(mod, "loads", refuse)
    model = mlflow.pyfunc.load_model(str(local))
    assert model.predict(pd.DataFrame({"image": [base64.b64encode(encoded_png()).decode()]}))


def test_altered_onnx_artifact_is_not_served(mlflow_server, exports, tmp_path):
    import mlflow

    name = _name()
    reg = register_export(exports["base"], name=name, tracking_uri=mlflow_server)
    local = Path(download(mlflow_server, f"models:/{name}/{reg.version}", str(tmp_path)))
    onnx_file = next(local.rglob("model.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(Exception, match="refusing to serve an altered graph"):
        mlflow.pyfunc.load_model(str(local))


def test_bad_export_dirs_register_nothing(mlflow_server, exports, tmp_path):
    client = connect(mlflow_server)
    name = _name()
    broken = shutil.copytree(exports["base"], tmp_path / "missing")
    (broken / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        register_export(broken, name=name, tracking_uri=mlflow_server)
    tampered = shutil.copytree(exports["base"], tmp_path / "tampered")
    (tampered / "metrics.json").write_text('{"val/mask_ap50_95": 0.99, "val_snapshot": "snap-val-1"}')
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        register_export(tampered, name=name, tracking_uri=mlflow_server)
    unfinished = shutil.copytree(exports["base"], tmp_path / "unfinished")
    (unfinished / "export.json").unlink()
    with pytest.raises(BundleError, match="not a finished export"):
        register_export(unfinished, name=name, tracking_uri=mlflow_server)
    no_metric = make_export(tmp_path / "nometric", metric=None)
    with pytest.raises(BundleError, match="has no finite number 'val/mask_ap50_95'"):
        register_export(no_metric, name=name, tracking_uri=mlflow_server)
    assert not client.search_registered_models(f"name='{name}'")


def test_failure_after_version_creation_leaves_nothing(mlflow_server, exports):
    """A champion whose metric tag is unreadable makes the gate fail after the version exists."""
    client = connect(mlflow_server)
    name = _name()
    first = register_export(exports["base"], name=name, tracking_uri=mlflow_server)
    client.set_model_version_tag(name, first.version, "metric.val/mask_ap50_95", "n/a")
    before = {a: getattr(alias_version(client, name, a), "version", None) for a in (CHAMPION, CHALLENGER)}
    assert before[CHAMPION] == first.version
    with pytest.raises(RegistryError, match="no numeric tag 'metric.val/mask_ap50_95'"):
        register_export(exports["better"], name=name, tracking_uri=mlflow_server)
    assert _versions(client, name) == [first.version]
    # the aliases point where they did before (the new version had taken @challenger)
    assert {a: getattr(alias_version(client, name, a), "version", None) for a in (CHAMPION, CHALLENGER)} == before


def test_server_down_is_a_clear_error(exports):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    with pytest.raises(RegistryError, match="not reachable"):
        register_export(exports["base"], name=_name(), tracking_uri=f"http://127.0.0.1:{port}")
    assert time.time() - start < 15


def test_register_job_reads_an_export_from_s3(mlflow_server, exports, s3_bucket):
    from cocoseg import storage
    from cocoseg.config import load_config
    from pipelines import register as job

    uri = f"{s3_bucket}/exports/base"
    storage.upload_dir(exports["base"], uri)
    name = _name()
    cfg = load_config(None, [f"tracking.tracking_uri={mlflow_server}"])
    result = job.run(cfg, uri, name)
    assert result.decision.decision == "bootstrap"
    storage.delete(f"{uri}/model.onnx")
    with pytest.raises(BundleError, match="model.onnx is missing"):
        job.run(cfg, uri, name)
    assert _versions(connect(mlflow_server), name) == [result.version]


def test_decide_refuses_measurements_that_are_not_comparable():
    same = {"eval.snapshot_id": "s1", "eval.split": "val", "eval.images": "60", "eval.protocol_hash": "abc"}
    assert decide("m", 0.5, 0.3, 0.0, champion_version="1", provenance=(same, dict(same))).decision == "promoted"
    for key, other in (("eval.snapshot_id", "s2"), ("eval.split", "test"), ("eval.images", "59"),
                       ("eval.protocol_hash", "def")):
        result = decide("m", 0.9, 0.3, 0.0, champion_version="1", provenance=(same, {**same, key: other}))
        assert result.decision == "rejected" and "not comparable" in result.reason
        assert key.removeprefix("eval.") in result.reason
    legacy = decide("m", 0.9, 0.3, 0.0, champion_version="1", provenance=(same, dict.fromkeys(same, "")))
    assert legacy.decision == "rejected" and "missing" in legacy.reason


def test_gate_tags_a_protocol_mismatch_and_does_not_promote(mlflow_server, tmp_path):
    """Two registrations whose evaluations ran under different protocols: the better one stays challenger."""
    from mlflow import MlflowClient

    prov = {"eval.snapshot_id": "snap-val-1", "eval.split": "val", "eval.images": 12}
    first = make_export(tmp_path / "a", metric=0.3, seed=0, extra_metrics={**prov, "eval.protocol_hash": "p1"})
    second = make_export(tmp_path / "b", metric=0.6, seed=1, extra_metrics={**prov, "eval.protocol_hash": "p2"})
    name = _name()
    register_export(first, name=name, tracking_uri=mlflow_server)
    result = register_export(second, name=name, tracking_uri=mlflow_server)
    assert result.decision.decision == "rejected" and "protocol_hash 'p2' vs 'p1'" in result.decision.reason
    tags = MlflowClient(mlflow_server).get_model_version(name, result.version).tags
    assert tags["gate.decision"] == "rejected" and "not comparable" in tags["gate.reason"]
    assert tags["eval.protocol_hash"] == "p2" and tags["eval.images"] == "12"
    assert alias_version(connect(mlflow_server), name, CHAMPION).version != result.version
