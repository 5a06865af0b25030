"""Latency of each produced format on the machine at hand.

Batch 1: one fixed (3/4 imgsz x imgsz) RGB image, ``warmup`` untimed runs then the median of
``runs`` timed runs, in milliseconds. Every row is timed end to end through the one predictor
(:class:`cocoseg.inference.Predictor`, predict settings): its letterbox, the forward of one
backend, then its torch NMS and masks. Backends: torch eager (CPU, and CUDA when present), ONNX
Runtime (:class:`~cocoseg.inference.OnnxBackend`, CPU execution provider) and the TensorRT engine
(:class:`~cocoseg.export.tensorrt.TensorRTBackend`, only with a CUDA device). Thread counts and the
1-minute load average are recorded with the figures: on a shared 2-core host they dominate the
numbers (an oversubscribed OpenMP pool can make torch 40x slower).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cocoseg.inference import OnnxBackend, Predictor
from cocoseg.utils import get_logger

from .tensorrt import EngineBuildError, TensorRTBackend

__all__ = ["END_TO_END", "bench_image", "bench_predictor", "benchmark", "median_ms"]

log = get_logger(__name__)

END_TO_END = "letterbox + forward + NMS + masks (cocoseg.inference.Predictor)"


def median_ms(fn: Callable[[], Any], *, warmup: int, runs: int) -> float:
    """Median wall time of ``fn()`` in ms over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_image(imgsz: int) -> np.ndarray:
    """The fixed benchmark image: (3/4 imgsz, imgsz, 3) uint8 RGB noise, so the letterbox pads."""
    return np.random.default_rng(0).integers(0, 256, (imgsz * 3 // 4, imgsz, 3), dtype=np.uint8)


def bench_predictor(predictor: Predictor, image: np.ndarray, *, warmup: int, runs: int) -> float:
    """Median ms of ``predictor.predict([image])`` (letterbox, the backend's forward, NMS, masks)."""

    def step() -> None:
        predictor.predict([image])
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    return median_ms(step, warmup=warmup, runs=runs)


def benchmark(model: nn.Module, onnx_path: str | Path, engine_path: str | Path | None, *, imgsz: int = 640,
              warmup: int = 3, runs: int = 10) -> dict[str, Any]:
    """Latency table: ``{"rows": [{"format", "device", "median_ms", "timed"}], "host": ..., ...}``."""
    threads = torch.get_num_threads()
    image = bench_image(imgsz)

    def row(fmt: str, device: str, predictor: Predictor) -> dict[str, Any]:
        return {"format": fmt, "device": device, "timed": END_TO_END,
                "median_ms": round(bench_predictor(predictor, image, warmup=warmup, runs=runs), 2)}

    rows = [row("torch eager", "cpu", Predictor(model, class_names=[], imgsz=imgsz, device="cpu")),
            row("onnxruntime", "cpu (CPUExecutionProvider)",
                Predictor(OnnxBackend(onnx_path, threads=threads), class_names=[], imgsz=imgsz))]
    if torch.cuda.is_available():
        rows.append(row("torch eager", torch.cuda.get_device_name(0),
                        Predictor(model, class_names=[], imgsz=imgsz, device="cuda")))
        model.cpu()
    if engine_path is not None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        try:
            rows.append(row("tensorrt", gpu, Predictor(TensorRTBackend(engine_path), class_names=[], imgsz=imgsz)))
        except (EngineBuildError, RuntimeError) as exc:  # e.g. in-graph NMS: an output of data-dependent shape
            rows.append({"format": "tensorrt", "device": gpu, "timed": END_TO_END, "median_ms": None,
                         "skipped": str(exc)})
            log.warning("TensorRT latency not measured: %s", exc)
    return {"rows": rows, "batch": 1, "imgsz": imgsz, "image_hw": list(image.shape[:2]), "warmup": warmup,
            "runs": runs, "cpu_threads": threads, "host": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
