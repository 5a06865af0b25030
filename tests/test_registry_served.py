"""`cocoseg register` measures what it registers: the export's eager model, its served ONNX and its
INT8 ONNX evaluated in one Ray Data pass on a real snapshot; a champion whose numbers come from
another split is evaluated again on the challenger's, not compared as is (real Ray, real mlflow server)."""

from __future__ import annotations

import json
import uuid

import pytest
from _train_support import TINY
from export_helpers import detecting_checkpoint

from cocoseg.config import load_config, with_values
from cocoseg.data.schema import read_manifest
from cocoseg.export.job import export_checkpoint
from cocoseg.registry import connect
from cocoseg.registry.register import register


@pytest.mark.extended  # test_retrain.py covers the same path (served pass with INT8, champion re-evaluation)
def test_register_evaluates_served_artifacts_and_reevaluates_a_champion(ray_local, tiny_snapshot, mlflow_server,
                                                                         tmp_path):
    names = read_manifest(tiny_snapshot)["class_names"]
    ckpt = detecting_checkpoint(tmp_path / "ckpt", class_names=names, imgsz=64)
    cfg = load_config(None, [*TINY, f"storage.root={tmp_path}", f"tracking.tracking_uri={mlflow_server}",
                             "export.bench=false", "export.formats=[onnx,onnx-int8]", "export.calibration_images=6",
                             "evaluate.actors=1", "evaluate.batch_size=16", "registry.bootstrap_resamples=200"])
    export = tmp_path / "export"
    export_checkpoint(cfg, ckpt, str(export), snapshot=tiny_snapshot)
    calib = json.loads((export / "export.json").read_text())["int8_calibration"]
    assert len(calib["calibration_image_ids"]) == 6 and calib["calibration_snapshot"] == tiny_snapshot
    card = json.loads((export / "model_card.json").read_text())["export"]["onnx_int8"]
    assert card["calibration_image_ids"] == calib["calibration_image_ids"] and card["quant_format"] == "QDQ"

    name = f"served-{uuid.uuid4().hex[:8]}"
    client = connect(mlflow_server)
    first = register(with_values(cfg, {"evaluate.split": "train"}), str(export), name, snapshot=tiny_snapshot)
    tags = client.get_model_version(name, first.version).tags
    assert first.decision.decision == "bootstrap", first.decision.reason
    assert tags["eval.split"] == "train" and tags["eval.matches"] == "true" and tags["eval.scorer"] == "pycocotools"
    assert tags["served.formats"] == "onnx,onnx-int8"
    for fmt in ("onnx", "onnx-int8"):
        for kind in ("mask", "box"):
            served, eager = (float(tags[f"metric.{k}"]) for k in (f"served/{fmt}/{kind}_ap50_95", f"val/{kind}_ap50_95"))
            assert float(tags[f"metric.served/{fmt}/delta_{kind}_ap50_95"]) == pytest.approx(served - eager)
    assert float(tags["metric.served/onnx/detections"]) > 0

    second = register(cfg, str(export), name, snapshot=tiny_snapshot)  # measured on val, champion on train
    tags = client.get_model_version(name, second.version).tags
    assert tags["eval.split"] == "val" and tags["gate.champion_reevaluated"] == "true"
    assert "/val (12 images; its stored numbers: " in tags["gate.champion_evidence"]
    assert "/train (36 images)" in tags["gate.champion_evidence"]
    # the same served ONNX on the same images: a difference of exactly 0, never a promotion
    assert second.decision.decision == "rejected" and "spans 0" in second.decision.reason
    assert float(tags["gate.difference"]) == 0.0
