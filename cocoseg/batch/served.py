"""Evaluate an export the way it is served: the eager model and each served artifact (the ONNX
under ONNX Runtime, the INT8 ONNX) on the same rows in one Ray Data pass (one batch: in this
process, ``cocoseg.batch.evaluate.runs_here``), under one protocol.

Each actor letterboxes a batch once and runs every backend on it, so the numbers differ only by
the backend. Per backend: the evaluate job's metrics (pycocotools COCOeval) and, for the served
artifacts, the per-image matches the promotion gate bootstraps (:mod:`cocoseg.metrics.bootstrap`).
The TensorRT engine is not evaluated here: its backend belongs to the export layer and needs a
CUDA device (docs/promotion.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from cocoseg import bundle, storage
from cocoseg.config import JobConfig
from cocoseg.data.schema import list_shards, read_manifest, snapshot_to_coco
from cocoseg.inference import (
    OnnxBackend,
    Predictor,
    Protocol,
    detection_row,
    detection_schema,
    detections_from_row,
)
from cocoseg.metrics import COCOEvaluator, flatten_metrics, per_class_metrics
from cocoseg.metrics.bootstrap import Matches, collect_matches
from cocoseg.metrics.coco import detections_to_coco
from cocoseg.model.weights import read_card
from cocoseg.utils import UserError

__all__ = ["ARTIFACT_FILES", "EAGER", "SCORER", "ServedDetectBatch", "measure_served"]

EAGER = "torch"
ARTIFACT_FILES = {"onnx": bundle.ONNX, "onnx-int8": bundle.ONNX_INT8}
SCORER = "pycocotools"  # the COCOeval that scores every backend here and whose matches the gate resamples


def _predictor(export_dir: str, backend: str, device: str, threads: int, imgsz: int) -> Predictor:
    if backend == EAGER:
        return Predictor.load(export_dir, device=device, imgsz=imgsz)
    card = read_card(export_dir)
    data = storage.read_bytes(storage.join(export_dir, ARTIFACT_FILES[backend]))
    return Predictor(OnnxBackend(data, threads=threads), class_names=card.class_names, imgsz=imgsz)


class ServedDetectBatch:
    """``map_batches`` callable: snapshot rows -> one row per image and backend: ``image_id``,
    ``backend``, then that backend's detection record (the columns of
    :class:`cocoseg.inference.DetectBatch`, :mod:`cocoseg.inference.records`)."""

    def __init__(self, *, weights: str, protocol: dict[str, Any], num_classes: int, device: str = "cpu",
                 threads: int = 1, backends: Sequence[str] = (EAGER, "onnx"),
                 only_ids: Sequence[int] | None = None) -> None:
        from cocoseg.data.stage import AugmentBatch

        self.only = None if only_ids is None else [int(i) for i in only_ids]
        torch.set_num_threads(threads)
        self.protocol = Protocol(**protocol)
        self.predictors = {b: _predictor(weights, b, device, threads, self.protocol.imgsz).for_evaluation(self.protocol)
                           for b in backends}
        self.stage = AugmentBatch(preset="val", imgsz=self.protocol.imgsz, seed=0, epoch=0, num_classes=num_classes)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from cocoseg.data.collate import collate_val

        if self.only is not None:  # a subset of the split (e.g. the images a new snapshot added)
            import pyarrow.compute as pc

            batch = batch.filter(pc.is_in(batch["image_id"], value_set=pa.array(self.only, pa.int64())))
            if batch.num_rows == 0:
                return _schema().empty_table()
        vb = collate_val(self.stage(batch))
        ids = vb.image_ids.tolist()
        rows = []
        for name, predictor in self.predictors.items():
            dets = predictor.detect(vb.images, vb.letterboxes, masks="rle")
            rows += [{"image_id": i, "backend": name, **detection_row(d, predictor.class_names, lb.orig_hw)}
                     for i, d, lb in zip(ids, dets, vb.letterboxes, strict=True)]
        return pa.Table.from_pylist(rows, schema=_schema())


def _schema() -> Any:
    import pyarrow as pa

    return detection_schema([("image_id", pa.int64()), ("backend", pa.string())])


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    """The evaluate job's metric names (``val/{box,mask}_{ap50_95,ap50,ap75}`` and per class)."""
    flat = flatten_metrics(result)
    names = {"AP": "ap50_95", "AP50": "ap50", "AP75": "ap75"}
    metrics = {f"val/{kind}_{names[stat]}": flat[f"{kind}/{stat}"] for kind in ("box", "mask") for stat in names}
    metrics.update(per_class_metrics(result, prefix="val/"))
    return metrics


def measure_served(cfg: JobConfig, export_dir: str, snapshot: str, split: str,
                   backends: Sequence[str] = (EAGER, "onnx"), only_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate ``backends`` of ``export_dir`` on ``snapshot``'s ``split`` (starts no Ray: the caller's),
    or on its images ``only_ids`` alone.

    Returns ``{"backends": {name: {"metrics", "detections", "matches"}}, "snapshot_id", "split",
    "images", "protocol", "protocol_hash", "scorer", "seconds"}``; ``matches`` ({"bbox", "segm"} ->
    :class:`Matches`) for every backend but the eager one.
    """
    from cocoseg.batch import evaluate

    unknown = [b for b in backends if b != EAGER and b not in ARTIFACT_FILES]
    if unknown:
        raise UserError(f"cannot evaluate {unknown} as served backends (known: {EAGER}, {', '.join(ARTIFACT_FILES)})")
    start = time.perf_counter()
    manifest = read_manifest(snapshot)
    card = read_card(export_dir)
    # the size the artifacts were exported at (what is served), else the card's
    exported = (storage.read_json(storage.join(export_dir, bundle.CARD)).get("export") or {}).get("imgsz")
    protocol = Protocol(imgsz=cfg.evaluate.imgsz or int(exported or card.imgsz), conf=cfg.evaluate.conf,
                        iou=cfg.evaluate.iou, max_det=cfg.evaluate.max_det)
    gt = snapshot_to_coco(snapshot, split)
    evaluators = {b: COCOEvaluator(gt, category_ids=list(manifest.category_ids)) for b in backends}
    results: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    counts = dict.fromkeys(backends, 0)
    image_ids: list[int] = []
    rows, served = manifest.splits[split].images, {"backends": list(backends), "only_ids": only_ids}
    pool, threads = evaluate.plan_detection(cfg, rows)
    if pool is None:  # one batch: detected here, no actor to start
        stream = evaluate._detections_here(cfg, export_dir, snapshot, split, protocol, card.num_classes,
                                           detector=ServedDetectBatch, detector_kwargs=served, threads=threads)
    else:
        stream = evaluate._detections(cfg, export_dir, list_shards(manifest, split), protocol, card.num_classes, pool,
                                      detector=ServedDetectBatch, detector_kwargs=served)
    for table in stream:
        rows = table.to_pylist()
        image_ids += [int(r["image_id"]) for r in rows if r["backend"] == backends[0]]
        for b in backends:
            mine = [r for r in rows if r["backend"] == b]
            ids, dets = [int(r["image_id"]) for r in mine], [detections_from_row(r) for r in mine]
            evaluators[b].process(ids, dets)
            counts[b] += sum(len(d) for d in dets)
            for i, d in zip(ids, dets, strict=True):
                results[b] += detections_to_coco(i, d, evaluators[b].category_ids)
    out = {}
    for b in backends:
        ev = evaluators[b]
        matches: dict[str, Matches] | None = None
        if b != EAGER and image_ids:
            matches = {t: collect_matches(ev.coco, results[b], t, image_ids, ev.category_ids) for t in ("bbox", "segm")}
        out[b] = {"metrics": _metrics(ev.evaluate()), "detections": counts[b], "matches": matches}
    return {"backends": out, "snapshot_id": manifest.snapshot_id, "split": split, "images": len(image_ids),
            "protocol": protocol.to_dict(), "protocol_hash": protocol.hash(), "scorer": SCORER,
            "seconds": round(time.perf_counter() - start, 3)}
