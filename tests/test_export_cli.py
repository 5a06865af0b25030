"""The deploy commands end to end through the real console entry point: ``cocoseg export`` on a
real (untrained, n-scale) cocoseg checkpoint, ``cocoseg register`` / ``promote`` / ``rollback``
against a real MLflow server, and the bad-input paths (clear message, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
import torch

from cocoseg.bundle import open_bundle


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cocoseg.model import build_model
    from cocoseg.model.weights import ModelCard, save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt") / "best"
    model = build_model("n", 2).eval()
    card = ModelCard(variant="n", num_classes=2, class_names=["cat", "dog"], imgsz=64, data_snapshot="snap-1")
    save_checkpoint(str(root), model, card)
    (root / "metrics.json").write_text(json.dumps({"mask_map50_95": 0.12, "val_snapshot": "snap-1"}))
    return root


@pytest.mark.slow
def test_cli_export_register_promote_rollback(checkpoint, cli, mlflow_server, tmp_path):
    out = tmp_path / "export"
    proc = cli("export", checkpoint, "export.imgsz=64", "export.bench=false", "--out", out,
               "--formats", "onnx,engine")
    assert json.loads(proc.stdout)["engine_built"] is False
    assert "TensorRT engine skipped" in proc.stderr  # said plainly; ONNX only
    bundle = open_bundle(out)
    assert bundle.card["variant"] == "n" and bundle.metrics["mask_map50_95"] == 0.12
    parity = bundle.card["export"]["onnx"]["parity"]
    assert parity["batches"] == [1, 2] and parity["max_abs"]["pred"] < 1e-3

    name = f"seg-{uuid.uuid4().hex[:8]}"
    uri = f"tracking.tracking_uri={mlflow_server}"
    first = json.loads(cli("register", out, uri, "--name", name).stdout)
    assert first["decision"] == "bootstrap" and first["version"] == "1"
    proc = cli("rollback", name, uri, check=False)
    assert proc.returncode == 2 and "records no previous champion" in proc.stderr
    second = json.loads(cli("register", out, uri, "registry.promotion_margin=0.01", "--name", name).stdout)
    assert second["decision"] == "rejected" and "short by" in second["reason"]
    assert "-> v2 (was v1)" in cli("promote", name, "2", uri).stdout
    assert "-> v1 (rolled back from v2)" in cli("rollback", name, uri).stdout


def test_cli_bad_inputs_are_clear_errors(checkpoint, cli, tmp_path):
    no_card = shutil.copytree(checkpoint, tmp_path / "nocard")
    (no_card / "model_card.json").unlink()
    proc = cli("export", no_card, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "model_card.json is missing" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "export.json").exists()

    proc = cli("export", checkpoint, "export.opset=17", "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "export.opset" in proc.stderr

    proc = cli("register", tmp_path / "nowhere", "--name", "x", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
