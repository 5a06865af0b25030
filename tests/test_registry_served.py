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
    names = list(read_manifest(tiny_snapshot).class_names)
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


def _self_labelled_source(src, ckpt: str) -> None:
    """Synthetic images labelled with the checkpoint's own confident boxes: its eager model scores
    high on them, so an export that loses accuracy has accuracy to lose (a random-weight model
    scores ~0 on real labels)."""
    from cocoseg.inference import Predictor, decode_image
    from cocoseg.ingest.synthetic import write_synthetic_coco

    write_synthetic_coco(str(src), images=16, size=(96, 80), seed=5, val_fraction=0.5, max_instances=2)
    predictor = Predictor.load(ckpt, conf=0.3, max_det=5)
    for split in ("train", "val"):
        path = src / "annotations" / f"instances_{split}.json"
        doc = json.loads(path.read_text())
        anns = []
        for img in doc["images"]:
            det = predictor.predict([decode_image((src / split / img["file_name"]).read_bytes())], masks="none")[0]
            for (x1, y1, x2, y2), cls in zip(det.boxes_xyxy.tolist(), det.classes.tolist(), strict=True):
                if x2 - x1 >= 2 and y2 - y1 >= 2:
                    anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(cls) + 1, "iscrowd": 0,
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                 "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
        assert anns, "the stand-in model found nothing to label"
        path.write_text(json.dumps({**doc, "annotations": anns}))


@pytest.mark.extended  # test_registry_gate.py covers the refusal on the measured numbers
def test_an_export_whose_onnx_scores_below_its_eager_model_is_refused(ray_local, mlflow_server, tmp_path):
    """A deliberately broken export (its model.onnx from other weights) measured for real."""
    import shutil

    import torch

    from cocoseg.bundle import MANIFEST, write_manifest
    from cocoseg.model import ModelCard, build_model, save_checkpoint
    from pipelines import ingest

    names = ["circle", "square", "triangle", "star"]
    ckpt = detecting_checkpoint(tmp_path / "ckpt", class_names=names, imgsz=64)
    _self_labelled_source(tmp_path / "src", ckpt)
    base = [f"storage.root={tmp_path}", f"tracking.tracking_uri={mlflow_server}", "export.bench=false",
            "evaluate.actors=1", "evaluate.batch_size=16", "registry.bootstrap_resamples=200"]
    snapshot = ingest.run(load_config(None, [*base, f"ingest.source={tmp_path / 'src'}"])).manifest.snapshot_uri
    cfg = load_config(None, base)
    good = tmp_path / "good"
    export_checkpoint(cfg, ckpt, str(good))
    torch.manual_seed(1)  # other weights, same classes and biases: a graph that is not the model
    other = build_model("n", len(names))
    with torch.no_grad():
        for branch in other.head.cv3:
            branch[-1].bias[:] = torch.tensor([0.5, -1.0, -2.0, 1.0])
    save_checkpoint(str(tmp_path / "other"), other.eval(), ModelCard(variant="n", num_classes=4, class_names=names,
                                                                     imgsz=64))
    export_checkpoint(cfg, str(tmp_path / "other"), str(tmp_path / "other-export"))
    broken = shutil.copytree(good, tmp_path / "broken")
    shutil.copyfile(tmp_path / "other-export" / "model.onnx", broken / "model.onnx")
    manifest = json.loads((broken / MANIFEST).read_text())
    write_manifest(broken, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})

    result = register(cfg, str(broken), f"broken-{uuid.uuid4().hex[:8]}", snapshot=snapshot)
    tags = connect(mlflow_server).get_model_version(result.name, result.version).tags
    eager, served = float(tags["metric.val/box_ap50_95"]), float(tags["metric.served/onnx/box_ap50_95"])
    assert eager > 0.3 and eager - served > 0.005, (eager, served)
    assert result.decision.decision == "rejected" and tags["gate.refused_by"] == "export_drop"
    assert f"served artifact onnx: box AP50-95 {served:.4f} vs eager {eager:.4f}" in result.decision.reason
