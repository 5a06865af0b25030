"""COCO evaluation of boxes and masks (spec 11), ``reset / process / evaluate``.

The scorer is faster-coco-eval (``COCOeval_faster``: C++ evaluate/accumulate, the same
definitions) by default, or pycocotools' ``COCOeval`` (``scorer="pycocotools"``); both give the
same AP to 1e-4 on real COCO JSON (tests/test_metrics.py) and faster-coco-eval scores ~4x faster
(tests/benchmarks/bench_validation.py). :func:`scorer_version` names the one that made a number.

    evaluator = COCOEvaluator(coco_gt_dict)              # e.g. storage.read_json(instances_val.json)
    for batch ...:
        evaluator.process(image_ids, postprocess(...))    # Detections in original-image pixels
    metrics = evaluator.evaluate()                        # {"bbox": {...}, "segm": {...}}

Each entry of the result holds ``AP`` (AP50-95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (0..1,
as COCOeval's ``stats[0:6]``), ``per_class`` ({class name: AP50-95}) and ``per_class_ap50``
({class name: AP50}), both for the classes with ground truth only, and ``per_class_pr50``
({class name: precision at the 101 recall points 0, 0.01, ..., 1 at IoU 0.5}: the PR curve).
:meth:`COCOEvaluator.confusion_matrix` counts box matches per (predicted, true) class. Model class k maps to the k-th category id of ``category_ids`` (default: the ground
truth's category ids in ascending order, which for COCO is the 80 -> 91 map of spec 12).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cocoseg.model.postprocess import masks_to_rle
from cocoseg.structures import Detections
from cocoseg.utils import UserError

__all__ = ["COCOEvaluator", "DEFAULT_SCORER", "EvaluationError", "SCORERS", "detections_to_coco", "flatten_metrics",
           "per_class_metrics", "scorer_version"]

SCORERS = ("faster-coco-eval", "pycocotools")
DEFAULT_SCORER = "faster-coco-eval"
_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class EvaluationError(UserError):
    """The ground truth or the predictions handed to the evaluator are unusable."""


def detections_to_coco(image_id: int, det: Detections, category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's detections -> COCO result dicts (bbox xywh rounded to 3 decimals, score to 5,
    ``segmentation`` the compressed RLE of the original-size mask: ``det.masks_rle`` when set,
    else ``det.masks`` encoded)."""
    if len(det) == 0:
        return []
    boxes = det.boxes_xyxy.detach().cpu().double().numpy()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).round(3)
    scores = det.scores.detach().cpu().double().numpy().round(5)
    classes = det.classes.detach().cpu().numpy()
    if classes.min() < 0 or classes.max() >= len(category_ids):
        raise EvaluationError(f"image {image_id}: class index {int(classes.max())} outside the "
                              f"{len(category_ids)} categories of the ground truth")
    rles = det.masks_rle if det.masks_rle is not None else (
        masks_to_rle(det.masks) if det.masks is not None else None)
    results = []
    for i in range(len(det)):
        row = {"image_id": int(image_id), "category_id": int(category_ids[int(classes[i])]),
               "bbox": [float(v) for v in xywh[i]], "score": float(scores[i])}
        if rles is not None:
            row["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"]}
        results.append(row)
    return results


def _quiet(fn, *args):
    """pycocotools prints progress to stdout; keep our logs clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def scorer_version(scorer: str = DEFAULT_SCORER) -> str:
    """``"faster-coco-eval 1.8.0"``: the scorer and its installed version (metrics.json, the gate)."""
    from importlib.metadata import version

    return f"{scorer} {version(scorer)}"


def _scorer(name: str):
    """(COCO class, COCOeval class) of a scorer."""
    if name == "pycocotools":
        return COCO, COCOeval
    if name == "faster-coco-eval":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        return FasterCOCO, COCOeval_faster
    raise ValueError(f"scorer {name!r} is not one of {', '.join(SCORERS)}")


def _build_gt(coco_gt: Mapping[str, Any]) -> COCO:
    """A pycocotools COCO from a COCO dict, filling ``iscrowd`` and ``area`` when absent."""
    for key in ("images", "annotations", "categories"):
        if key not in coco_gt:
            raise EvaluationError(f"ground truth is not a COCO dict: the {key!r} list is missing")
    data = copy.deepcopy(dict(coco_gt))
    coco = COCO()
    coco.dataset = data
    _quiet(coco.createIndex)
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(mask_utils.area(coco.annToRLE(ann))) if ann.get("segmentation") else \
                float(ann["bbox"][2] * ann["bbox"][3])
    return coco


class COCOEvaluator:
    """Accumulates detections of a split and scores them with COCOeval (``bbox`` and ``segm``).

    ``coco_gt``: the split's COCO dict (images, annotations, categories). ``category_ids``: the
    COCO category id of each model class (default: the ground truth's ids, ascending).
    ``iou_types``: a subset of ("bbox", "segm"); ``segm`` needs ``Detections.masks``.
    ``scorer``: one of :data:`SCORERS` (``self.scorer`` names it with its version).
    """

    def __init__(self, coco_gt: Mapping[str, Any], *, category_ids: Sequence[int] | None = None,
                 iou_types: Sequence[str] = ("bbox", "segm"), scorer: str = DEFAULT_SCORER) -> None:
        self._coco_cls, self._eval_cls = _scorer(scorer)
        self.scorer = scorer_version(scorer)
        self.coco = _build_gt(coco_gt)
        # the scorer's own index of the same (area-filled) ground truth; pycocotools' is self.coco
        self._gt = self.coco if self._coco_cls is COCO else _quiet(self._coco_cls, self.coco.dataset)
        self.category_ids = list(category_ids) if category_ids is not None else sorted(self.coco.cats)
        unknown = [c for c in self.category_ids if c not in self.coco.cats]
        if unknown:
            raise EvaluationError(f"category ids {unknown[:5]} are not in the ground truth's categories")
        for t in iou_types:
            if t not in ("bbox", "segm"):
                raise ValueError(f"iou type {t!r} is not 'bbox' or 'segm'")
        self.iou_types = tuple(iou_types)
        self.reset()

    def reset(self) -> None:
        self._results: list[dict[str, Any]] = []
        self._image_ids: set[int] = set()

    def process(self, image_ids: Sequence[int], detections: Sequence[Detections]) -> None:
        """Add the detections of a batch; ``image_ids`` are the COCO image ids, one per entry."""
        if len(image_ids) != len(detections):
            raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detections")
        for image_id, det in zip(image_ids, detections, strict=True):
            image_id = int(image_id)
            if image_id not in self.coco.imgs:
                raise EvaluationError(f"image id {image_id} is not in the ground truth")
            if "segm" in self.iou_types and det.masks is None and det.masks_rle is None:
                raise ValueError("segm evaluation needs Detections.masks (postprocess with_masks=True)")
            self._image_ids.add(image_id)
            self._results.extend(detections_to_coco(image_id, det, self.category_ids))

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Score everything processed since :meth:`reset`: ``{iou_type: {AP, AP50, ..., per_class}}``.

        Only the processed images count (COCOeval ``imgIds``); with no detections at all every AP
        is 0.
        """
        image_ids = sorted(self._image_ids)
        return {t: self._evaluate_one(t, image_ids) for t in self.iou_types}

    def _evaluate_one(self, iou_type: str, image_ids: list[int]) -> dict[str, Any]:
        names = {c: self.coco.cats[c].get("name", str(c)) for c in self.category_ids}
        if not self._results or not image_ids:
            present = {a["category_id"] for a in self.coco.dataset["annotations"]
                       if a["image_id"] in self._image_ids}
            zeros = {names[c]: 0.0 for c in self.category_ids if c in present}
            return {**dict.fromkeys(_STAT_NAMES, 0.0), "per_class": zeros, "per_class_ap50": dict(zeros),
                    "per_class_pr50": {name: [0.0] * 101 for name in zeros}}
        results = self._results if iou_type == "segm" else [
            {k: v for k, v in r.items() if k != "segmentation"} for r in self._results]
        coco_dt = _quiet(self._gt.loadRes, results)
        evaluator = self._eval_cls(self._gt, coco_dt, iou_type)
        evaluator.params.imgIds = image_ids
        _quiet(evaluator.evaluate)
        _quiet(evaluator.accumulate)
        _quiet(evaluator.summarize)
        stats = {name: max(float(v), 0.0) for name, v in zip(_STAT_NAMES, evaluator.stats[:6], strict=True)}
        # precision: [iou thresholds, recall points, categories, area ranges, max dets]
        precision = evaluator.eval["precision"]
        per_class, per_class_ap50, per_class_pr50 = {}, {}, {}
        for k, cat_id in enumerate(evaluator.params.catIds):
            if cat_id not in names:
                continue
            p = precision[:, :, k, 0, -1]
            if (p > -1).any():  # -1 everywhere means the class has no ground truth in these images
                per_class[names[cat_id]] = float(p[p > -1].mean())
                p50 = p[0][p[0] > -1]  # iouThrs[0] = 0.5
                per_class_ap50[names[cat_id]] = float(p50.mean()) if p50.size else 0.0
                # the PR curve at IoU 0.5 (COCOeval's interpolated precision; -1 past the last recall reached)
                per_class_pr50[names[cat_id]] = [round(max(float(v), 0.0), 4) for v in p[0]]
        return {**stats, "per_class": per_class, "per_class_ap50": per_class_ap50, "per_class_pr50": per_class_pr50}

    def confusion_matrix(self, *, conf: float = 0.25, iou: float = 0.45) -> np.ndarray:
        """Box confusion matrix of everything processed since :meth:`reset`.

        Returns int64 ``(nc + 1, nc + 1)`` counts, ``[predicted class, true class]`` in model-class
        order; index ``nc`` is background: row ``nc`` counts objects nothing found, column ``nc``
        detections that match no object. Detections scoring below ``conf`` are left out; a
        detection and a (non-crowd) object match when their box IoU is at least ``iou``, each at
        most once, highest IoU first, whatever their classes (so a wrong class shows off the
        diagonal), the reference tool's counting at its default thresholds.
        """
        index = {c: i for i, c in enumerate(self.category_ids)}
        nc = len(self.category_ids)
        matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)
        found = defaultdict(list)
        for r in self._results:
            if r["score"] >= conf and r["category_id"] in index:
                found[r["image_id"]].append(r)
        for image_id in self._image_ids:
            truths = [a for a in self.coco.imgToAnns.get(image_id, [])
                      if not a.get("iscrowd", 0) and a["category_id"] in index]
            _count_matches(matrix, truths, found.get(image_id, []), index, iou)
        return matrix


def _count_matches(matrix: np.ndarray, truths: list[dict], found: list[dict], index: Mapping[int, int],
                   iou: float) -> None:
    """Add one image's greedy box matches (COCO xywh boxes) to ``matrix`` (see confusion_matrix)."""
    background = matrix.shape[0] - 1
    true_cls = [index[a["category_id"]] for a in truths]
    found_cls = [index[r["category_id"]] for r in found]
    matched_truth, matched_found = set(), set()
    if truths and found:
        # (found, truths) IoUs; iscrowd=0 everywhere: plain IoU
        ious = np.asarray(mask_utils.iou([r["bbox"] for r in found], [a["bbox"] for a in truths], [0] * len(truths)))
        pairs = np.argwhere(ious >= iou)
        for d, g in pairs[np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")]:
            if d not in matched_found and g not in matched_truth:
                matched_found.add(d)
                matched_truth.add(g)
                matrix[found_cls[d], true_cls[g]] += 1
    for g, c in enumerate(true_cls):
        if g not in matched_truth:
            matrix[background, c] += 1
    for d, c in enumerate(found_cls):
        if d not in matched_found:
            matrix[c, background] += 1


def flatten_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"bbox": {"AP": .3}, "segm": {...}}`` -> ``{"box/AP": .3, "mask/AP": ...}`` (no per-class)."""
    prefix = {"bbox": "box", "segm": "mask"}
    return {f"{prefix.get(t, t)}/{k}": float(v) for t, m in metrics.items() for k, v in m.items()
            if not k.startswith("per_class") and not (isinstance(v, float) and math.isnan(v))}


def per_class_metrics(metrics: Mapping[str, Mapping[str, Any]], prefix: str = "") -> dict[str, float]:
    """Per-class AP as flat keys: ``{prefix}{box,mask}_ap50_95/<class>`` and ``..._ap50/<class>``."""
    kinds = {"bbox": "box", "segm": "mask"}
    out = {}
    for iou_type, m in metrics.items():
        kind = kinds.get(iou_type, iou_type)
        for key, stat in (("per_class", "ap50_95"), ("per_class_ap50", "ap50")):
            out.update({f"{prefix}{kind}_{stat}/{name}": float(v) for name, v in m.get(key, {}).items()})
    return out
