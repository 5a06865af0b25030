"""Produce a complete, verified export directory (``cocoseg.bundle`` layout) from a model.

Order matters: ONNX -> parity (raw graph) -> onnxslim -> parity (slim graph; the slim file is kept
only if it passes) -> TensorRT engine when asked for and possible -> INT8 ONNX when asked for
(``onnx-int8``; its accuracy is the gate's to judge, docs/promotion.md) -> latency -> weights, card,
metrics, config -> manifest last. A parity failure raises before anything is committed, and a
previous manifest in the folder is removed first, so a failed re-export never looks finished.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from cocoseg import bundle
from cocoseg.config import ExportConfig
from cocoseg.utils import get_logger, git_commit

from .bench import benchmark
from .onnx import ExportError, export_onnx, slim_onnx
from .parity import ParityError, check_parity
from .quantize import quantize_int8
from .tensorrt import build_engine, tensorrt_status

__all__ = ["Calibration", "export_bundle"]

Calibration = tuple[str, list[int], Any]  # (snapshot URI, image ids, (n, 3, S, S) float32 images)

log = get_logger(__name__)


def _parity(model: nn.Module, path: Path, cfg: ExportConfig, num_classes: int) -> dict[str, Any]:
    report = check_parity(model, path, num_classes=num_classes, imgsz=cfg.imgsz,
                          batches=(1, 2) if cfg.dynamic_batch else (1,), nms=cfg.nms,
                          nms_iou=cfg.nms_iou, nms_conf=cfg.nms_conf)
    return report.to_dict()


def _onnx_step(model: nn.Module, out: Path, cfg: ExportConfig, num_classes: int) -> dict[str, Any]:
    raw = out / ".raw.onnx"
    info = export_onnx(model, raw, num_classes=num_classes, imgsz=cfg.imgsz, opset=cfg.opset,
                       dynamic_batch=cfg.dynamic_batch, dynamic_hw=cfg.dynamic_hw, max_batch=cfg.max_batch,
                       nms=cfg.nms, nms_iou=cfg.nms_iou, nms_conf=cfg.nms_conf, exporter=cfg.exporter)
    try:
        parity = _parity(model, raw, cfg, num_classes)
        final = out / bundle.ONNX
        if cfg.simplify:
            slim = out / ".slim.onnx"
            try:
                nodes = slim_onnx(raw, slim)
                parity = _parity(model, slim, cfg, num_classes)
                slim.replace(final)
                info.simplified, info.nodes = True, nodes
            except Exception as exc:  # a ParityError, or onnxslim failing on the graph
                # The unsimplified graph already passed: keep it and say why.
                what = "broke parity" if isinstance(exc, ParityError) else f"failed ({type(exc).__name__})"
                info.notes.append(f"onnxslim result rejected: {what}: {exc}")
                log.warning("onnxslim %s, keeping the unsimplified graph: %s", what, exc)
        if not final.exists():
            raw.replace(final)
    finally:
        for tmp in (raw, out / ".slim.onnx"):
            tmp.unlink(missing_ok=True)
    info.path = final
    return {**info.to_dict(), "parity": parity, "sha256": bundle.sha256_file(final)}


def _engine_step(out: Path, cfg: ExportConfig, timing_cache_dir: str) -> dict[str, Any]:
    if "engine" not in cfg.formats:
        return {"built": False, "reason": "not requested (export.formats has no 'engine')"}
    trt, reason = tensorrt_status()
    if trt is None:
        log.warning("TensorRT engine skipped: %s. Exported ONNX only.", reason)
        return {"built": False, "reason": reason}
    facts = build_engine(out / bundle.ONNX, out / bundle.ENGINE, imgsz=cfg.imgsz,
                         batch=(cfg.min_batch, cfg.opt_batch, cfg.max_batch), dynamic_hw=cfg.dynamic_hw,
                         max_hw=cfg.max_hw, fp16=cfg.fp16, workspace_gib=cfg.workspace_gib,
                         timing_cache_dir=timing_cache_dir or None, trt=trt)
    return {"built": True, **facts}


def _int8_step(out: Path, cfg: ExportConfig, calibration: Calibration | None) -> dict[str, Any] | None:
    (out / bundle.ONNX_INT8).unlink(missing_ok=True)  # never a stale INT8 graph beside a new ONNX
    if "onnx-int8" not in cfg.formats:
        return None
    if calibration is None:
        raise ExportError("export.formats has onnx-int8 but no calibration images were given: export from a "
                          "checkpoint whose data snapshot is under storage.root, or pass --snapshot")
    snapshot, ids, images = calibration
    facts = quantize_int8(out / bundle.ONNX, out / bundle.ONNX_INT8, images, exclude=cfg.int8_exclude)
    return {**facts, "calibration_snapshot": snapshot, "calibration_split": "train",
            "calibration_seed": cfg.calibration_seed, "calibration_image_ids": list(ids)}


def export_bundle(model: nn.Module, *, weights_file: str | Path, card: dict[str, Any], out_dir: str | Path,
                  cfg: ExportConfig, num_classes: int, metrics: dict[str, Any] | None = None,
                  resolved_config: dict[str, Any] | None = None, timing_cache_dir: str = "",
                  train_run_id: str = "", calibration: Calibration | None = None) -> dict[str, Any]:
    """Write the export directory ``out_dir``; returns the manifest.

    ``weights_file`` is the checkpoint's safetensors file (copied as is), ``card`` its model card
    (extended with an ``export`` section, which also records ``train_run_id``, the MLflow run
    that trained the weights, when given). ``calibration``: (snapshot, image ids, images) for
    ``onnx-int8`` (:func:`.quantize.calibration_batch`). Raises ``ParityError`` / ``ExportError``.
    """
    if not cfg.imgsz:  # export.imgsz=0: the size the weights were trained at
        cfg = dataclasses.replace(cfg, imgsz=int(card.get("imgsz") or 640))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / bundle.MANIFEST).unlink(missing_ok=True)
    section: dict[str, Any] = {"imgsz": cfg.imgsz, "num_classes": num_classes,
                               "onnx": _onnx_step(model, out, cfg, num_classes)}
    section["engine"] = _engine_step(out, cfg, timing_cache_dir)
    int8 = _int8_step(out, cfg, calibration)
    if int8 is not None:
        section["onnx_int8"] = int8
    if not section["engine"]["built"]:
        (out / bundle.ENGINE).unlink(missing_ok=True)  # never leave a stale engine beside a new ONNX
    if cfg.bench:
        engine = out / bundle.ENGINE if section["engine"]["built"] else None
        section["latency"] = benchmark(model, out / bundle.ONNX, engine, imgsz=cfg.imgsz,
                                       warmup=cfg.bench_warmup, runs=cfg.bench_runs)
    section["export_commit"] = git_commit()
    if train_run_id:
        section["train_run_id"] = train_run_id
    shutil.copyfile(weights_file, out / bundle.WEIGHTS)
    (out / bundle.CARD).write_text(json.dumps({**card, "export": section}, indent=2, sort_keys=True))
    (out / bundle.METRICS).write_text(json.dumps(metrics or {}, indent=2, sort_keys=True))
    (out / bundle.CONFIG).write_text(yaml.safe_dump(resolved_config or {}, sort_keys=True))
    info: dict[str, Any] = {"engine_built": section["engine"]["built"]}
    if int8 is not None:  # which train images calibrated the INT8 graph
        info["int8_calibration"] = {k: int8[k] for k in ("calibration_snapshot", "calibration_seed",
                                                         "calibration_image_ids")}
    manifest = bundle.write_manifest(out, info)
    log.info("export committed: %s (%s)", out, ", ".join(sorted(manifest["files"])))
    return manifest
