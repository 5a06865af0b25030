"""The paired bootstrap's AP re-accumulation against COCOeval itself: on the full set, per class,
and on a resample computed directly as a dataset holding the drawn copies of each image."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from _gate_support import coco, detections, ground_truth, matches_for
from pycocotools.cocoeval import COCOeval

from cocoseg.metrics.bootstrap import load_matches, paired_bootstrap, resample_weights, save_matches


@pytest.fixture(scope="module")
def case():
    gt = ground_truth(images=24, seed=1)
    good = detections(gt, jitter=0.05, seed=2, miss=0.1)
    poor = detections(gt, jitter=0.25, seed=3, miss=0.3)
    return gt, good, poor, matches_for(gt, good), matches_for(gt, poor)


def _cocoeval(gt: dict, results: list[dict], iou_type: str) -> COCOeval:
    rows = results if iou_type == "segm" else [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    c = coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(c, c.loadRes(copy.deepcopy(rows)), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_full_set_and_per_class_ap_equal_cocoeval(case, iou_type):
    gt, good, _, matches, _ = case
    ev = _cocoeval(gt, good, iou_type)
    m = matches[iou_type]
    assert m.ap()[0] == pytest.approx(ev.stats[0], abs=1e-12)
    precision = ev.eval["precision"][:, :, :, 0, -1]
    for k, name in enumerate(m.class_names):
        p = precision[:, :, k]
        assert m.per_class()[name] == pytest.approx(p[p > -1].mean(), abs=1e-12)


def test_a_resample_equals_cocoeval_on_the_duplicated_images(case):
    """Direct computation: a dataset holding each drawn image as often as it was drawn."""
    gt, good, _, matches, _ = case
    weights = resample_weights(len(gt["images"]), 3, seed=7)
    for row in weights:
        dup = {"categories": gt["categories"], "images": [], "annotations": []}
        results = []
        for index, img in enumerate(gt["images"]):
            for copy_no in range(int(row[index])):
                new_id = len(dup["images"]) + 1
                dup["images"].append({**img, "id": new_id})
                for a in gt["annotations"]:
                    if a["image_id"] == img["id"]:
                        dup["annotations"].append({**a, "id": len(dup["annotations"]) + 1, "image_id": new_id})
                results += [{**r, "image_id": new_id} for r in good if r["image_id"] == img["id"]]
                del copy_no
        for iou_type in ("bbox", "segm"):
            direct = _cocoeval(dup, results, iou_type).stats[0]
            assert matches[iou_type].ap(row[None])[0] == pytest.approx(direct, abs=1e-9)


def test_paired_bootstrap_is_seeded_and_identical_models_tie(case, tmp_path):
    _, _, _, good, poor = case
    a = paired_bootstrap(good["segm"], poor["segm"], resamples=200, seed=5)
    b = paired_bootstrap(good["segm"], poor["segm"], resamples=200, seed=5)
    c = paired_bootstrap(good["segm"], poor["segm"], resamples=200, seed=6)
    assert (a.low, a.high, a.difference) == (b.low, b.high, b.difference)
    assert (a.low, a.high) != (c.low, c.high)
    assert a.difference > 0 and a.low > 0 and a.low <= a.difference <= a.high
    same = paired_bootstrap(good["segm"], good["segm"], resamples=200, seed=5)
    assert same.difference == 0 and same.low == 0 and same.high == 0  # the interval spans 0
    save_matches(tmp_path / "m.npz", good)
    back = load_matches(tmp_path / "m.npz")
    assert back["segm"].ap()[0] == good["segm"].ap()[0] and back["bbox"].per_class() == good["bbox"].per_class()
    w = resample_weights(len(good["segm"].image_ids), 20, seed=1)
    assert np.array_equal(back["segm"].ap(w), good["segm"].ap(w))
