"""Latency of each produced format on the machine at hand.

Batch 1: one fixed (3/4 imgsz x imgsz) RGB image, ``warmup`` untimed runs then the median of
``runs`` timed runs, in milliseconds. torch eager (CPU, or CUDA when present) and ONNX Runtime
(CPU execution provider) are timed end to end through the one predictor
(:class:`cocoseg.inference.Predictor`, predict settings): its letterbox, the forward (eager
``decode(model(x))`` or the ONNX graph's ``pred``/``proto``), then its NMS and masks. The
TensorRT engine (only with a CUDA device) is timed on the engine's execution alone. Thread
counts and the 1-minute load average are recorded with the figures: on a shared 2-core host
they dominate the numbers (an oversubscribed OpenMP pool can make torch 40x slower).
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

from cocoseg.inference import Predictor
from cocoseg.structures import Detections
from cocoseg.utils import get_logger

__all__ = ["bench_engine", "bench_image", "bench_onnxruntime", "bench_torch", "benchmark", "median_ms",
           "onnx_predict", "onnx_session"]

log = get_logger(__name__)


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


def bench_torch(predictor: Predictor, image: np.ndarray, *, warmup: int, runs: int) -> float:
    """Median ms of ``predictor.predict([image])`` (letterbox, forward, NMS, masks)."""

    def step() -> None:
        predictor.predict([image])
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    return median_ms(step, warmup=warmup, runs=runs)


def onnx_predict(sess: Any, predictor: Predictor, image: np.ndarray, *, masks: str = "full") -> Detections:
    """One image through an ONNX Runtime session of the export, with ``predictor``'s letterbox,
    input scaling and post-processing: the export's answer to what ``predictor.predict`` gives."""
    letterboxed, lb = predictor.prepare(image)
    x = torch.from_numpy(letterboxed).permute(2, 0, 1)[None].float() / 255.0  # as Predictor.forward
    pred, proto = sess.run(["pred", "proto"], {"images": x.numpy()})
    (det,) = predictor.postprocess(torch.from_numpy(pred), torch.from_numpy(proto), [lb], masks=masks)
    return det


def onnx_session(onnx_path: str | Path, *, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def bench_onnxruntime(onnx_path: str | Path, predictor: Predictor, image: np.ndarray, *, warmup: int, runs: int,
                      threads: int) -> float:
    """Median ms of :func:`onnx_predict` (letterbox, ONNX Runtime on CPU, NMS, masks)."""
    sess = onnx_session(onnx_path, threads=threads)
    return median_ms(lambda: onnx_predict(sess, predictor, image), warmup=warmup, runs=runs)


def bench_engine(engine_path: str | Path, imgsz: int, *, warmup: int, runs: int) -> float:
    """Run the serialized plan with TensorRT's runtime on CUDA tensors owned by torch."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    context = engine.create_execution_context()
    context.set_input_shape("images", (1, 3, imgsz, imgsz))
    buffers = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"engine output {name} has a data-dependent shape {shape}; cannot benchmark")
        dtype = torch.float16 if engine.get_tensor_dtype(name) == trt.DataType.HALF else torch.float32
        if engine.get_tensor_dtype(name) == trt.DataType.INT64:
            dtype = torch.int64
        buffers[name] = torch.rand(shape, device="cuda").to(dtype)
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream()

    def step() -> None:
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()

    return median_ms(step, warmup=warmup, runs=runs)


def benchmark(model: nn.Module, onnx_path: str | Path, engine_path: str | Path | None, *, imgsz: int = 640,
              warmup: int = 3, runs: int = 10) -> dict[str, Any]:
    """Latency table: ``{"rows": [{"format", "device", "median_ms", "timed"}], "host": ..., ...}``."""
    threads = torch.get_num_threads()
    image = bench_image(imgsz)
    end_to_end = "letterbox + forward + NMS + masks (cocoseg.inference.Predictor)"
    predictor = Predictor(model, class_names=[], imgsz=imgsz, device="cpu")
    rows = [{"format": "torch eager", "device": "cpu", "timed": end_to_end,
             "median_ms": round(bench_torch(predictor, image, warmup=warmup, runs=runs), 2)}]
    rows.append({"format": "onnxruntime", "device": "cpu (CPUExecutionProvider)", "timed": end_to_end,
                 "median_ms": round(bench_onnxruntime(onnx_path, predictor, image, warmup=warmup, runs=runs,
                                                      threads=threads), 2)})
    if torch.cuda.is_available():
        cuda = Predictor(model, class_names=[], imgsz=imgsz, device="cuda")
        rows.append({"format": "torch eager", "device": torch.cuda.get_device_name(0), "timed": end_to_end,
                     "median_ms": round(bench_torch(cuda, image, warmup=warmup, runs=runs), 2)})
        model.cpu()
    if engine_path is not None:
        row = {"format": "tensorrt", "device": torch.cuda.get_device_name(0), "timed": "engine execution only"}
        try:
            row["median_ms"] = round(bench_engine(engine_path, imgsz, warmup=warmup, runs=runs), 2)
        except RuntimeError as exc:  # e.g. in-graph NMS: an output of data-dependent shape
            row["median_ms"], row["skipped"] = None, str(exc)
            log.warning("TensorRT latency not measured: %s", exc)
        rows.append(row)
    return {"rows": rows, "batch": 1, "imgsz": imgsz, "image_hw": list(image.shape[:2]), "warmup": warmup,
            "runs": runs, "cpu_threads": threads, "host": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
