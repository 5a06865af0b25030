"""Per-image COCO matches and the paired bootstrap of an AP difference (the promotion gate's evidence).

COCOeval's ``evaluate`` runs once per model and split; what it decides per (class, image) (which
detections match a ground-truth object at each IoU threshold, which are ignored, how many objects
count) is kept as :class:`Matches`. COCO AP50-95 of *any multiset of those images* is then
re-accumulated from the kept matches without matching again: an image drawn ``c`` times weighs
``c`` in the cumulative true / false positive counts and in the object count, which gives exactly
the precision/recall points COCOeval's ``accumulate`` gives for a dataset holding ``c`` copies of the
image (checked against a direct COCOeval on duplicated images in tests/test_registry_bootstrap.py;
only equal detection scores across images, which COCOeval orders by image, can make them differ).

:func:`paired_bootstrap` resamples image ids with replacement, ``resamples`` times from
``numpy.random.default_rng(seed)``, applies the *same* draw to both models and returns the full-set
AP difference and the percentile interval of the resampled differences. Area range "all", 100
detections per image (COCOeval ``stats[0]``).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BootstrapResult", "Matches", "collect_matches", "load_matches", "paired_bootstrap", "save_matches"]

_EPS = np.spacing(1)  # COCOeval's precision denominator guard
_RECALLS = np.linspace(0.0, 1.0, 101)
_CHUNK = 1 << 22  # resamples x thresholds x detections per vectorized block (float64: 32 MiB)


@dataclass
class Matches:
    """One model's per-image COCOeval matches for one IoU type (area "all", max 100 detections).

    ``image_ids`` (N,), ``category_ids`` (K,) and ``class_names`` (K,); ``gt`` (K, N) int: objects
    that count (not crowd/ignored) per class and image; per class k, ``dets[k]`` = (``image`` (D,)
    index into ``image_ids``, ``tp`` (T, D) bool: matched and not ignored, ``fp`` (T, D) bool:
    unmatched and not ignored), in COCOeval's accumulate order (score descending, stable by image).
    """

    iou_type: str
    image_ids: np.ndarray
    category_ids: np.ndarray
    class_names: list[str]
    gt: np.ndarray
    dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]]

    def ap(self, weights: np.ndarray | None = None) -> np.ndarray:
        """AP50-95 for each row of ``weights`` (B, N) (image counts; default all ones): (B,)."""
        per_class = self.class_ap(weights)
        with np.errstate(invalid="ignore"), _quiet_warnings():
            return np.nanmean(per_class, axis=1)

    def class_ap(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(B, K) AP50-95 per class and weight row; NaN where the class has no counted object."""
        w = np.ones((1, len(self.image_ids))) if weights is None else np.atleast_2d(weights).astype(np.float64)
        out = np.full((w.shape[0], len(self.category_ids)), np.nan)
        for k, (image, tp, fp) in enumerate(self.dets):
            objects = w @ self.gt[k]
            present = objects > 0
            if present.any():
                out[present, k] = _class_ap(w[present], objects[present], image, tp, fp)
        return out

    def per_class(self) -> dict[str, float]:
        """Full-set AP50-95 of each class with objects in the split: {class name: AP}."""
        values = self.class_ap()[0]
        return {n: float(v) for n, v in zip(self.class_names, values, strict=True) if not np.isnan(v)}


def _class_ap(w: np.ndarray, objects: np.ndarray, image: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """AP50-95 of one class for B weight rows: (B,). Vectorized in blocks of resamples."""
    t, d = tp.shape
    if d == 0:
        return np.zeros(len(w))
    step = max(1, _CHUNK // (t * d))
    return np.concatenate([_class_ap_block(w[i:i + step], objects[i:i + step], image, tp, fp)
                           for i in range(0, len(w), step)])


def _class_ap_block(w: np.ndarray, objects: np.ndarray, image: np.ndarray, tp: np.ndarray,
                    fp: np.ndarray) -> np.ndarray:
    wd = w[:, image][:, None, :]  # (B, 1, D): each detection weighs its image's count
    tps = np.cumsum(wd * tp, axis=2)
    fps = np.cumsum(wd * fp, axis=2)
    precision = tps / (tps + fps + _EPS)
    precision = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]  # COCOeval's envelope
    b, t, d = tps.shape
    # COCOeval looks up the first point whose recall tps/n reaches each threshold. Counts are whole
    # numbers, so that is the first point with tps >= k, k the least count whose float quotient by n
    # reaches the threshold (division is monotone; ceil is corrected by one either way for rounding).
    n = objects[:, None]
    k = np.ceil(_RECALLS[None, :] * n)
    k = np.where((k - 1) / n >= _RECALLS, k - 1, k)
    k = np.where(k / n < _RECALLS, k + 1, k)
    # all rows in one searchsorted: whole-number rows offset by more than any count stay exact and sorted
    offset = (np.arange(b * t) * (float(objects.max()) + 2.0))[:, None]
    flat = (tps.reshape(b * t, d) + offset).ravel()
    idx = np.searchsorted(flat, np.repeat(k, t, axis=0) + offset, side="left") - (np.arange(b * t) * d)[:, None]
    reached = idx < d
    q = np.where(reached, np.take_along_axis(precision.reshape(b * t, d), np.minimum(idx, d - 1), axis=1), 0.0)
    return q.reshape(b, t * len(_RECALLS)).mean(axis=1)


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a row with no class present
        yield


def collect_matches(coco_gt: Any, results: Sequence[Mapping[str, Any]], iou_type: str, image_ids: Sequence[int],
                    category_ids: Sequence[int]) -> Matches:
    """Run COCOeval's ``evaluate`` once on ``results`` (COCO result dicts) over ``image_ids`` and keep
    its per-image matches. ``coco_gt``: a pycocotools ``COCO``; ``category_ids``: the classes scored."""
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted(int(i) for i in image_ids)
    rows = list(results) if iou_type == "segm" else [{k: v for k, v in r.items() if k != "segmentation"}
                                                      for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(rows) if rows else _empty_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = image_ids
        ev.params.catIds = [int(c) for c in category_ids]
        ev.evaluate()
    n_img, n_area = len(image_ids), len(ev.params.areaRng)
    n_thr = len(ev.params.iouThrs)
    max_det = ev.params.maxDets[-1]
    gt = np.zeros((len(category_ids), n_img), np.int32)
    dets = []
    for k in range(len(category_ids)):
        scores, images, tps, fps = [], [], [], []
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0 = "all"
            if e is None:
                continue
            gt[k, i] = int(np.count_nonzero(e["gtIgnore"] == 0))
            s = np.asarray(e["dtScores"][:max_det])
            if s.size:
                m = e["dtMatches"][:, :max_det] > 0
                ig = e["dtIgnore"][:, :max_det].astype(bool)
                scores.append(s), images.append(np.full(s.size, i, np.int32))
                tps.append(m & ~ig), fps.append(~m & ~ig)
        if scores:
            order = np.argsort(-np.concatenate(scores), kind="mergesort")  # COCOeval's accumulate order
            dets.append((np.concatenate(images)[order], np.concatenate(tps, 1)[:, order],
                         np.concatenate(fps, 1)[:, order]))
        else:
            dets.append((np.zeros(0, np.int32), np.zeros((n_thr, 0), bool), np.zeros((n_thr, 0), bool)))
    names = [coco_gt.cats[int(c)].get("name", str(c)) for c in category_ids]
    return Matches(iou_type, np.asarray(image_ids, np.int64), np.asarray(category_ids, np.int64), names, gt, dets)


def _empty_results(coco_gt: Any) -> Any:
    """A results COCO with no detections (``loadRes`` refuses an empty list)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                    "annotations": []}
    coco.createIndex()
    return coco


def save_matches(path: str | Path, matches: Mapping[str, Matches]) -> None:
    """Write ``{iou_type: Matches}`` as one compressed ``.npz`` (tp/fp bit-packed)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for kind, m in matches.items():
        meta[kind] = {"class_names": m.class_names, "counts": [int(d[0].size) for d in m.dets],
                      "thresholds": int(m.dets[0][1].shape[0]) if m.dets else 10}
        arrays[f"{kind}.image_ids"], arrays[f"{kind}.category_ids"], arrays[f"{kind}.gt"] = m.image_ids, m.category_ids, m.gt
        arrays[f"{kind}.image"] = np.concatenate([d[0] for d in m.dets]) if m.dets else np.zeros(0, np.int32)
        for j, name in ((1, "tp"), (2, "fp")):
            arrays[f"{kind}.{name}"] = np.packbits(np.concatenate([d[j] for d in m.dets], 1), axis=1) if m.dets \
                else np.zeros((10, 0), np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_matches(path: str | Path) -> dict[str, Matches]:
    """Read a :func:`save_matches` file back: ``{iou_type: Matches}``."""
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        out = {}
        for kind, info in meta.items():
            counts = np.asarray(info["counts"], np.int64)
            total = int(counts.sum())
            tp = np.unpackbits(z[f"{kind}.tp"], axis=1, count=total).astype(bool)
            fp = np.unpackbits(z[f"{kind}.fp"], axis=1, count=total).astype(bool)
            image = z[f"{kind}.image"]
            bounds = np.concatenate([[0], np.cumsum(counts)])
            dets = [(image[a:b], tp[:, a:b], fp[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            out[kind] = Matches(kind, z[f"{kind}.image_ids"], z[f"{kind}.category_ids"], list(info["class_names"]),
                                z[f"{kind}.gt"], dets)
    return out


@dataclass(frozen=True)
class BootstrapResult:
    """AP(challenger) - AP(champion) on the full set, its ``confidence`` percentile interval over
    ``resamples`` paired resamples of the images drawn with ``seed``, and the seconds it took."""

    difference: float
    low: float
    high: float
    challenger_ap: float
    champion_ap: float
    resamples: int
    seed: int
    confidence: float
    images: int
    seconds: float

    def tags(self) -> dict[str, str]:
        return {"gate.ci_low": f"{self.low:.6f}", "gate.ci_high": f"{self.high:.6f}",
                "gate.difference": f"{self.difference:.6f}", "gate.resamples": str(self.resamples),
                "gate.seed": str(self.seed), "gate.confidence": repr(self.confidence),
                "gate.images": str(self.images), "gate.bootstrap_seconds": f"{self.seconds:.3f}"}


def resample_weights(images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images) counts: each row draws ``images`` image indices with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, images, size=(resamples, images))
    weights = np.zeros((resamples, images))
    np.add.at(weights, (np.repeat(np.arange(resamples), images), draws.ravel()), 1.0)
    return weights


def paired_bootstrap(challenger: Matches, champion: Matches, *, resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> BootstrapResult:
    """The paired bootstrap of AP50-95(challenger) - AP50-95(champion) over their common images."""
    if not np.array_equal(challenger.image_ids, champion.image_ids):
        raise ValueError(f"paired bootstrap needs the same images: {len(challenger.image_ids)} vs "
                         f"{len(champion.image_ids)} image ids, or different ids")
    if not np.array_equal(challenger.category_ids, champion.category_ids):
        raise ValueError("paired bootstrap needs the same classes on both sides")
    start = time.perf_counter()
    weights = resample_weights(len(challenger.image_ids), resamples, seed)
    diffs = challenger.ap(weights) - champion.ap(weights)
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha]) if diffs.size else (np.nan, np.nan)
    ours, theirs = float(challenger.ap()[0]), float(champion.ap()[0])
    return BootstrapResult(ours - theirs, float(low), float(high), ours, theirs, resamples, seed, confidence,
                           len(challenger.image_ids), time.perf_counter() - start)
