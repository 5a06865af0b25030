"""The evaluate job against the in-training validator, through real local Ray and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, tiny_snapshot: str) -> str:
    """An n-variant 4-class checkpoint whose class logits are pushed up, so it detects things."""
    from export_helpers import detecting_checkpoint

    from cocoseg.data.schema import read_manifest

    manifest = read_manifest(tiny_snapshot)
    return detecting_checkpoint(tmp_path_factory.mktemp("weights") / "w", class_names=list(manifest.class_names),
                                data_snapshot=manifest.snapshot_id)


def _validator_metrics(tiny_snapshot: str, weights: str) -> dict[str, float]:
    from cocoseg.config import load_config
    from cocoseg.data.schema import read_manifest, snapshot_to_coco
    from cocoseg.engine import build
    from cocoseg.model.weights import load_checkpoint

    cfg = load_config(None, ["model.num_classes=4", "model.imgsz=64", "train.batch_size=4", "train.preview_images=2"])
    manifest = read_manifest(tiny_snapshot)
    validate = build.build_validator(cfg, build.build_val_batches(cfg, tiny_snapshot), device=torch.device("cpu"),
                                     coco_gt=snapshot_to_coco(tiny_snapshot, "val"),
                                     category_ids=list(manifest.category_ids), class_names=list(manifest.class_names))
    model, _ = load_checkpoint(weights)
    metrics, plots = validate(model, 0)
    assert plots["preview"][:8] == b"\x89PNG\r\n\x1a\n"
    curves = plots["curves"]  # what the worker journals for the best epoch and tracking draws
    assert set(curves["pr50"]) == {"box", "mask"} and curves["class_names"] == list(manifest.class_names)
    # every true object is in its class's column once, found (some row) or missed (background row)
    gt = snapshot_to_coco(tiny_snapshot, "val")
    objects = [sum(1 for a in gt["annotations"] if a["category_id"] == c and not a.get("iscrowd"))
               for c in manifest.category_ids]
    matrix = curves["confusion"]["matrix"]
    assert len(matrix) == len(objects) + 1
    assert [sum(row[c] for row in matrix) for c in range(len(objects))] == objects
    return metrics


def test_evaluate_job_matches_the_validator_and_logs_per_class_ap(ray_local, tiny_snapshot: str, weights: str,
                                                                  mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from cocoseg.config import load_config
    from cocoseg.data.schema import read_manifest
    from cocoseg.tracking import create_run
    from pipelines import evaluate as job

    manifest = read_manifest(tiny_snapshot)
    expected = _validator_metrics(tiny_snapshot, weights)
    cfg = load_config(None, [f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=evaluate-test",
                             "evaluate.actors=2", "evaluate.batch_size=5", "evaluate.cpus_per_actor=0.5"])
    parent = create_run(tracking_uri=mlflow_server, experiment="evaluate-test", run_name="train-run-x", params={},
                        tags={})
    doc = job.run(cfg, weights, tiny_snapshot, out=str(tmp_path / "eval"), parent_run="train-run-x")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["images"] == expected["val/images"] == manifest.splits["val"].images
    assert written["snapshot_id"] == manifest.snapshot_id and written["split"] == "val"
    assert len(written["protocol_hash"]) == 16 and written["protocol"]["conf"] == 0.001
    # an untrained model scores near 0; per-class keys and counts must still agree exactly
    for key, value in doc["metrics"].items():
        assert value == pytest.approx(expected[key], abs=1e-4), key
    for name in manifest.class_names:
        for kind in ("box_ap50_95", "mask_ap50_95", "box_ap50", "mask_ap50"):
            assert f"val/{kind}/{name}" in written["metrics"] or f"val/{kind}/{name}" not in expected
    assert any(k.startswith("val/mask_ap50_95/") for k in written["metrics"])
    run = MlflowClient(mlflow_server).get_run(doc["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["val/mask_ap50_95"] == pytest.approx(written["metrics"]["val/mask_ap50_95"])
    assert run.data.tags["protocol_hash"] == written["protocol_hash"]


def test_in_process_detection_scores_as_the_actor_pool(ray_local, tiny_snapshot: str, weights: str) -> None:
    """A validation task with one CPU actor's worth of work detects in its own process
    (``validation.actors=1``): the same detections, counts and AP as the Ray Data pool, and the
    same ``limit`` (the whole split, in process against a pool: the served-pass test below)."""
    from cocoseg.batch.evaluate import measure
    from cocoseg.config import load_config

    cfg = load_config(None, ["evaluate.actors=1", "evaluate.batch_size=5", "evaluate.cpus_per_actor=0.5"])
    pooled = measure(cfg, weights, tiny_snapshot, "val", limit=7, confusion=True)
    here = measure(cfg, weights, tiny_snapshot, "val", limit=7, confusion=True, in_process=True)
    assert here["images"] == pooled["images"] == 7 and here["detections"] == pooled["detections"] > 0
    assert here["confusion"] == pooled["confusion"]
    assert here["metrics"] == pytest.approx(pooled["metrics"], abs=1e-9)


def test_one_batch_of_served_artifacts_is_detected_in_process_with_the_pools_numbers(ray_local, tiny_snapshot: str,
                                                                                     weights: str, tmp_path: Path,
                                                                                     caplog) -> None:
    """The gate's served pass on a split of one batch (``evaluate.actors=0``, the default) starts no
    actor (``runs_here``): the same metrics and the same per-image matches as a one-actor pool."""
    import logging

    import numpy as np

    from cocoseg.batch.evaluate import runs_here
    from cocoseg.batch.served import measure_served
    from cocoseg.config import load_config
    from cocoseg.export.job import export_checkpoint

    base = ["model.num_classes=4", "model.imgsz=64", "export.imgsz=64", "export.bench=false", "evaluate.batch_size=16"]
    auto, pooled_cfg = load_config(None, base), load_config(None, [*base, "evaluate.actors=1"])
    assert runs_here(auto, 12) and not runs_here(auto, 17) and not runs_here(pooled_cfg, 12)
    assert not runs_here(load_config(None, [*base, "evaluate.use_gpu=true"]), 12)
    export = tmp_path / "export"
    export_checkpoint(auto, weights, str(export), snapshot=tiny_snapshot)

    torch.set_num_threads(2)  # the detector sets its own (1): this process's count comes back after
    with caplog.at_level(logging.INFO, logger="cocoseg"):
        here = measure_served(auto, str(export), tiny_snapshot, "val")
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        pooled = measure_served(pooled_cfg, str(export), tiny_snapshot, "val")  # evaluate.actors=1: its pool
    said = [r.getMessage() for r in caplog.records if "detected in this process" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("evaluate: 12 image(s), one batch"), said
    assert here["images"] == pooled["images"] == 12
    for backend in ("torch", "onnx"):
        mine, theirs = here["backends"][backend], pooled["backends"][backend]
        assert mine["detections"] == theirs["detections"] > 0
        assert mine["metrics"] == pytest.approx(theirs["metrics"], abs=1e-9)
    for task in ("bbox", "segm"):
        mine, theirs = here["backends"]["onnx"]["matches"][task], pooled["backends"]["onnx"]["matches"][task]
        assert np.array_equal(mine.image_ids, theirs.image_ids) and np.array_equal(mine.gt, theirs.gt)
        assert all(np.array_equal(a, b) for m, t in zip(mine.dets, theirs.dets, strict=True)
                   for a, b in zip(m, t, strict=True))
