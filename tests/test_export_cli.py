"""The deploy commands end to end through the real console entry point: ``cocoseg export`` on a
real (untrained, n-scale) cocoseg checkpoint, ``cocoseg register`` / ``promote`` / ``rollback``
against a real MLflow server, and the bad-input paths (clear message, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
import torch
import yaml

from cocoseg.bundle import open_bundle
from cocoseg.registry import connect


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cocoseg.model import build_model
    from cocoseg.model.weights import ModelCard, save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt") / "best"
    model = build_model("n", 2).eval()
    card = ModelCard(variant="n", num_classes=2, class_names=["cat", "dog"], imgsz=64, data_snapshot="snap-1")
    save_checkpoint(str(root), model, card)
    (root / "metrics.json").write_text(json.dumps({"val/mask_ap50_95": 0.12, "val_snapshot": "snap-1"}))
    return root


def _main(capsys, *args) -> tuple[int, str, str]:
    """The console command's entry function, in-process (the export test runs the real binary)."""
    from cocoseg.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_export_register_promote_rollback(checkpoint, cli, mlflow_server, tmp_path, capsys):
    out = tmp_path / "export"
    proc = cli("export", checkpoint, "export.bench=false", "--out", out,  # export.imgsz: the card's 64
               "--formats", "onnx,engine", "--train-run-id", "run-42")
    assert json.loads(proc.stdout)["engine_built"] is False
    assert "TensorRT engine skipped" in proc.stderr  # said plainly; ONNX only
    bundle = open_bundle(out)
    assert bundle.card["variant"] == "n" and bundle.metrics["val/mask_ap50_95"] == 0.12
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert bundle.card["export"]["imgsz"] == 64 and resolved["export"]["imgsz"] == 64  # resolved, not 0
    parity = bundle.card["export"]["onnx"]["parity"]
    assert parity["batches"] == [1, 2] and parity["max_abs"]["pred"] < 1e-3

    name = f"seg-{uuid.uuid4().hex[:8]}"
    uri = f"tracking.tracking_uri={mlflow_server}"
    code, stdout, _ = _main(capsys, "register", out, uri, "--name", name)
    first = json.loads(stdout)
    assert code == 0 and first["decision"] == "bootstrap" and first["version"] == "1"
    tags = connect(mlflow_server).get_model_version(name, "1").tags
    assert (tags["train_run_id"], tags["variant"], tags["data_snapshot"]) == ("run-42", "n", "snap-1")
    code, _, err = _main(capsys, "rollback", name, uri)
    assert code == 2 and "records no previous champion" in err
    code, stdout, _ = _main(capsys, "register", out, uri, "registry.promotion_margin=0.01", "--name", name)
    second = json.loads(stdout)
    assert second["decision"] == "rejected" and "short by" in second["reason"]
    assert "-> v2 (was v1)" in _main(capsys, "promote", name, "2", uri)[1]
    assert "-> v1 (rolled back from v2)" in _main(capsys, "rollback", name, uri)[1]


def test_cli_bad_inputs_are_clear_errors(checkpoint, tmp_path, capsys):
    no_card = shutil.copytree(checkpoint, tmp_path / "nocard")
    (no_card / "model_card.json").unlink()
    code, _, err = _main(capsys, "export", no_card, "--out", tmp_path / "out")
    assert code == 2 and "model_card.json is missing" in err
    assert not (tmp_path / "out" / "export.json").exists()

    code, _, err = _main(capsys, "export", checkpoint, "export.opset=17", "--out", tmp_path / "out")
    assert code == 2 and "export.opset" in err

    code, _, err = _main(capsys, "register", tmp_path / "nowhere", f"storage.root={tmp_path}", "--name", "x")
    assert code == 2 and "does not exist" in err
