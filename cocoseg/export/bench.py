"""Latency of each produced format on the machine at hand.

Batch 1 at ``imgsz`` (640 by default), a fixed input, ``warmup`` untimed runs then the median of
``runs`` timed runs, in milliseconds. Formats: torch eager (CPU, or CUDA when present), ONNX
Runtime (CPU execution provider) and the TensorRT engine (only with a CUDA device). Thread
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

from cocoseg.utils import get_logger

__all__ = ["bench_engine", "bench_onnxruntime", "bench_torch", "benchmark", "median_ms"]

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


def bench_torch(model: nn.Module, imgsz: int, *, warmup: int, runs: int, device: str = "cpu") -> float:
    model = model.to(device).eval()
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0)).to(device)

    def step() -> None:
        with torch.inference_mode():
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return median_ms(step, warmup=warmup, runs=runs)


def bench_onnxruntime(onnx_path: str | Path, imgsz: int, *, warmup: int, runs: int, threads: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    return median_ms(lambda: sess.run(None, {"images": x}), warmup=warmup, runs=runs)


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
    """Latency table: ``{"rows": [{"format", "device", "median_ms"}], "host": ..., ...}``."""
    threads = torch.get_num_threads()
    rows = [{"format": "torch eager", "device": "cpu",
             "median_ms": round(bench_torch(model, imgsz, warmup=warmup, runs=runs), 2)}]
    rows.append({"format": "onnxruntime", "device": "cpu (CPUExecutionProvider)",
                 "median_ms": round(bench_onnxruntime(onnx_path, imgsz, warmup=warmup, runs=runs,
                                                      threads=threads), 2)})
    if torch.cuda.is_available():
        rows.append({"format": "torch eager", "device": torch.cuda.get_device_name(0),
                     "median_ms": round(bench_torch(model, imgsz, warmup=warmup, runs=runs,
                                                    device="cuda"), 2)})
        model.cpu()
    if engine_path is not None:
        row = {"format": "tensorrt", "device": torch.cuda.get_device_name(0)}
        try:
            row["median_ms"] = round(bench_engine(engine_path, imgsz, warmup=warmup, runs=runs), 2)
        except RuntimeError as exc:  # e.g. in-graph NMS: an output of data-dependent shape
            row["median_ms"], row["skipped"] = None, str(exc)
            log.warning("TensorRT latency not measured: %s", exc)
        rows.append(row)
    return {"rows": rows, "batch": 1, "imgsz": imgsz, "warmup": warmup, "runs": runs,
            "cpu_threads": threads, "host": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
