"""COCO evaluator: ground truth fed back scores 1.0; known perturbations score what pycocotools says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cocoseg.metrics import COCOEvaluator, EvaluationError, flatten_metrics
from cocoseg.structures import COCO91_TO_COCO80, Detections


def _load(coco8_seg: Path, split: str) -> dict:
    return json.loads((coco8_seg / "annotations" / f"instances_{split}.json").read_text())


def _gt_as_detections(gt: dict, shift_px: float = 0.0) -> dict[int, Detections]:
    """Every ground-truth instance as a detection with score 1 (boxes optionally shifted right)."""
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    out = {}
    for image_id, img in coco.imgs.items():
        anns = coco.imgToAnns[image_id]
        boxes = torch.tensor([[a["bbox"][0] + shift_px, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift_px,
                               a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float64).view(-1, 4)
        masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).bool() if anns else \
            torch.zeros(0, img["height"], img["width"], dtype=torch.bool)
        out[image_id] = Detections(boxes_xyxy=boxes.float(), scores=torch.ones(len(anns)),
                                   classes=torch.tensor([COCO91_TO_COCO80[a["category_id"]] for a in anns]),
                                   masks=masks)
    return out


@pytest.mark.parametrize("split", ["train", "val"])
def test_ground_truth_as_predictions_scores_one(coco8_seg: Path, split: str) -> None:
    gt = _load(coco8_seg, split)
    evaluator = COCOEvaluator(gt)
    dets = _gt_as_detections(gt)
    evaluator.process(list(dets), list(dets.values()))
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0), (iou_type, metrics[iou_type])
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert metrics[iou_type]["per_class"] and all(v == pytest.approx(1.0)
                                                      for v in metrics[iou_type]["per_class"].values())
    flat = flatten_metrics(metrics)
    assert flat["box/AP"] == pytest.approx(1.0) and flat["mask/AP50"] == pytest.approx(1.0)


def test_shifted_boxes_give_pycocotools_own_figure(coco8_seg: Path) -> None:
    """Shift every box by 15 px: our evaluator must report exactly what COCOeval reports when fed
    the same results built by hand from the annotations."""
    gt = _load(coco8_seg, "train")
    dets = _gt_as_detections(gt, shift_px=15.0)
    evaluator = COCOEvaluator(gt, iou_types=("bbox",))
    evaluator.process(list(dets), list(dets.values()))
    ours = evaluator.evaluate()["bbox"]

    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    coco.createIndex()
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                "bbox": [a["bbox"][0] + 15.0, a["bbox"][1], a["bbox"][2], a["bbox"][3]]}
               for a in gt["annotations"]]
    reference = COCOeval(coco, coco.loadRes(results), "bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    assert 0.0 < ours["AP"] < 1.0
    for k, name in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        assert ours[name] == pytest.approx(max(reference.stats[k], 0.0), abs=1e-6), name


def _one_box_gt() -> dict:
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[20:60, 10:50] = 1  # 40 x 40 square
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    return {"images": [{"id": 7, "height": 100, "width": 100, "file_name": "7.jpg"}],
            "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "bus"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 20, 40, 40],
                             "segmentation": rle, "iscrowd": 0, "area": 1600.0}]}


def test_known_iou_gives_known_ap() -> None:
    """A prediction of IoU 0.725 with the only box matches at thresholds 0.50..0.70 (5 of 10):
    AP50 = 1, AP75 = 0, AP50-95 = 0.5; masks identical to the boxes give the same figures."""
    gt = _one_box_gt()
    # Same height, width w with IoU = 40*w / (1600 + 40*w - 40*min(w, 40)) ... take a wider box:
    # IoU = 1600 / (40 * w) = 0.725 -> w = 55.172...; build it as x1 = 10, x2 = 10 + w.
    width = 1600 / (40 * 0.725)
    mask = torch.zeros(1, 100, 100, dtype=torch.bool)
    det = Detections(boxes_xyxy=torch.tensor([[10.0, 20.0, 10.0 + width, 60.0]]), scores=torch.tensor([0.9]),
                     classes=torch.tensor([1]), masks=mask)
    evaluator = COCOEvaluator(gt, iou_types=("bbox",))
    evaluator.process([7], [det])
    box = evaluator.evaluate()["bbox"]
    assert box["AP50"] == pytest.approx(1.0)
    assert box["AP75"] == pytest.approx(0.0)
    assert box["AP"] == pytest.approx(0.5)
    assert box["per_class"] == {"bus": pytest.approx(0.5)}

    # Wrong class: nothing matches.
    evaluator.reset()
    evaluator.process([7], [Detections(det.boxes_xyxy, det.scores, torch.tensor([0]), mask)])
    assert evaluator.evaluate()["bbox"]["AP"] == 0.0


def test_no_detections_and_bad_input() -> None:
    gt = _one_box_gt()
    evaluator = COCOEvaluator(gt)
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, 100, 100, dtype=torch.bool))
    evaluator.process([7], [empty])
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == 0.0 and metrics["segm"]["per_class"] == {"bus": 0.0}
    with pytest.raises(EvaluationError, match="image id 8"):
        evaluator.process([8], [empty])
    with pytest.raises(EvaluationError, match="class index 5"):
        evaluator.process([7], [Detections(torch.zeros(1, 4), torch.ones(1), torch.tensor([5]),
                                           torch.zeros(1, 100, 100, dtype=torch.bool))])
    with pytest.raises(EvaluationError, match="'annotations' list is missing"):
        COCOEvaluator({"images": [], "categories": []})


def _boxes_gt() -> dict:
    """Two 100 x 100 images, classes 1 and 2 (COCO ids), box-only instances."""
    def ann(i, image_id, cat, x, y, crowd=0):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [x, y, 20, 20], "area": 400.0,
                "iscrowd": crowd, "segmentation": [[x, y, x + 20, y, x + 20, y + 20, x, y + 20]]}
    return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [ann(1, 1, 1, 10, 10), ann(2, 1, 2, 60, 60), ann(3, 2, 1, 10, 10), ann(4, 2, 2, 60, 10),
                            ann(5, 2, 2, 40, 60, crowd=1)]}


def test_confusion_matrix_counts_hits_confusions_misses_and_false_alarms() -> None:
    """Image 1: 'a' found as 'a', 'b' found as 'a' (a confusion). Image 2: 'a' found as 'a',
    'b' missed, a detection on nothing (a false alarm), one below the score threshold, one on the
    crowd region (matched to nothing: a false alarm too, crowds are not objects here)."""
    evaluator = COCOEvaluator(_boxes_gt(), iou_types=("bbox",))

    def det(boxes, scores, classes):
        return Detections(boxes_xyxy=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                          scores=torch.tensor(scores), classes=torch.tensor(classes))

    evaluator.process([1, 2], [det([[10, 10, 30, 30], [61, 61, 81, 81]], [0.9, 0.8], [0, 0]),
                               det([[11, 10, 31, 30], [80, 80, 99, 99], [60, 10, 80, 30], [40, 60, 60, 80]],
                                   [0.7, 0.6, 0.1, 0.5], [0, 1, 1, 0])])
    matrix = evaluator.confusion_matrix(conf=0.25, iou=0.45)
    # rows: predicted a, b, background; columns: true a, b, background
    assert matrix.tolist() == [[2, 1, 1],
                               [0, 0, 1],
                               [0, 1, 0]]
    assert matrix.sum() == 6  # 4 objects + 2 unmatched detections above the threshold: nothing lost
    curves = evaluator.evaluate()["bbox"]["per_class_pr50"]
    assert set(curves) == {"a", "b"} and all(len(p) == 101 for p in curves.values())
    assert curves["a"][0] == pytest.approx(1.0)  # both 'a' found first: precision 1 at low recall


def _same_scores(a: dict, b: dict) -> None:
    """Every summary AP and per-class AP / AP50 / PR curve within 1e-4, box and mask."""
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert a[iou_type][name] == pytest.approx(b[iou_type][name], abs=1e-4), (iou_type, name)
        assert a[iou_type]["per_class"].keys() == b[iou_type]["per_class"].keys()
        for key in ("per_class", "per_class_ap50"):
            for cls, v in a[iou_type][key].items():
                assert v == pytest.approx(b[iou_type][key][cls], abs=1e-4), (iou_type, key, cls)
        for cls, curve in a[iou_type]["per_class_pr50"].items():
            assert np.allclose(curve, b[iou_type]["per_class_pr50"][cls], atol=1e-4), (iou_type, cls)


def _score(gt: dict, dets: dict, scorer: str) -> dict:
    evaluator = COCOEvaluator(gt, scorer=scorer)
    evaluator.process(list(dets), list(dets.values()))
    assert evaluator.scorer.startswith(scorer + " ")  # name and version, as metrics.json records it
    return evaluator.evaluate()


def test_faster_coco_eval_matches_pycocotools_on_coco8_seg(coco8_seg: Path) -> None:
    """Real COCO JSON (both coco8-seg splits) with jittered, rescored and partly misclassified
    detections: the two scorers agree to 1e-4 on every box and mask figure."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        gt = _load(coco8_seg, split)
        dets = _gt_as_detections(gt, shift_px=6.0)
        for det in dets.values():
            det.scores = torch.from_numpy(rng.uniform(0.05, 1.0, len(det)).astype(np.float32))
            det.classes = torch.where(torch.from_numpy(rng.random(len(det)) < 0.2), 0, det.classes)
            det.masks = torch.roll(det.masks, shifts=(4, 6), dims=(1, 2))  # masks off by (4, 6) px too
        ours, reference = _score(gt, dets, "faster-coco-eval"), _score(gt, dets, "pycocotools")
        assert 0.05 < reference["segm"]["AP"] < 0.99, reference["segm"]["AP"]  # neither trivial nor empty
        _same_scores(ours, reference)


def test_faster_coco_eval_matches_pycocotools_with_300_detections_per_image() -> None:
    """A COCO-shaped val set (COCO image sizes, polygon masks, 5-30 objects) with 300 detections per
    image, as the evaluation protocol keeps (max_det 300): the same AP to 1e-4, box and mask."""
    from _scoring_data import coco_gt, detections

    gt = coco_gt(8, objects=(5, 30), seed=3)
    dets = detections(gt, 300, seed=4)
    assert sum(len(d) for d in dets.values()) == 8 * 300
    ours, reference = _score(gt, dets, "faster-coco-eval"), _score(gt, dets, "pycocotools")
    assert 0.05 < reference["bbox"]["AP"] < 0.9 and 0.05 < reference["segm"]["AP"] < 0.9
    _same_scores(ours, reference)


def test_unknown_scorer_is_refused() -> None:
    with pytest.raises(ValueError, match="pycocotools"):
        COCOEvaluator(_one_box_gt(), scorer="cocoapi")
