"""TensorRT engine build from the exported ONNX (10.x and 11.x Python API).

The engine is a raw serialized plan (no header) built with one optimisation profile on the
input ``images``: (min, opt, max) batch, H x W fixed at ``imgsz`` (or min 32 / opt imgsz /
max ``max_hw`` for a dynamic-H x W export). Precision branches on the TensorRT major version:

- 10.x: networks are weakly typed; ``fp16=True`` sets ``BuilderFlag.FP16`` (when the GPU has
  fast FP16), so TensorRT may pick FP16 kernels per layer.
- 11.x: every network is strongly typed and ``BuilderFlag.FP16`` no longer exists: the engine
  runs in the types of the ONNX graph (FP32 here). FP16 on 11.x means converting the ONNX first
  (NVIDIA ModelOpt AutoCast), which this project does not do yet; the build facts say so.

A timing cache (keyed by TensorRT version, GPU and compute capability) makes rebuilds fast.
Engines are executable artifacts tied to the TensorRT version and GPU: the build facts returned
here (TensorRT/CUDA versions, GPU name, compute capability, precision, profile, SHA-256) go into
the model card and the registry tags. Never deserialize an engine you did not build.

:class:`TensorRTBackend` runs an engine as a backend of the one predictor
(``cocoseg.inference.Predictor``): the predictor's letterbox in, the engine's ``pred`` / ``proto``
out, then the predictor's torch NMS, masks and RLE (what the latency bench times).

Everything takes the ``tensorrt`` module as an argument (``trt``) so the branching logic is
unit-tested on CPU against a small fake; :func:`tensorrt_status` says whether a real build
can run here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from cocoseg import storage
from cocoseg.utils import get_logger

from .onnx import ExportError

__all__ = ["EngineBuildError", "TensorRTBackend", "build_engine", "device_facts", "tensorrt_status", "trt_major"]

log = get_logger(__name__)


class EngineBuildError(ExportError):
    """The TensorRT parser or builder rejected the network."""


def tensorrt_status() -> tuple[ModuleType | None, str]:
    """``(tensorrt module, "")`` when an engine can be built here, else ``(None, reason)``."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return None, f"the 'tensorrt' package is not importable ({exc}); install cocoseg[tensorrt] on a GPU host"
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA device is visible (torch.cuda.is_available() is False)"
    return trt, ""


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def device_facts() -> dict[str, Any]:
    """GPU name, compute capability and CUDA version of device 0 (via torch)."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu_name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
            "cuda_version": torch.version.cuda or "unknown"}


def _profile_shapes(imgsz: int, batch: tuple[int, int, int], dynamic_hw: bool,
                    max_hw: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    b_min, b_opt, b_max = batch
    if not 1 <= b_min <= b_opt <= b_max:
        raise ExportError(f"TensorRT profile batch must satisfy 1 <= min <= opt <= max, got {batch}")
    lo, hi = (32, max_hw) if dynamic_hw else (imgsz, imgsz)
    return (b_min, 3, lo, lo), (b_opt, 3, imgsz, imgsz), (b_max, 3, hi, hi)


def _create_network(trt: Any, builder: Any) -> tuple[Any, str]:
    """Network creation flags per major version; returns (network, typing)."""
    major = trt_major(trt)
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if major >= 11:
        # Strongly typed is the only mode on 11.x; the flag is accepted (and ignored) if present.
        strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strong is not None:
            flags |= 1 << int(strong)
        return builder.create_network(flags), "strong"
    return builder.create_network(flags), "weak"


def _set_precision(trt: Any, builder: Any, config: Any, fp16: bool) -> str:
    """Apply the precision request; returns what the engine will use, in words."""
    major = trt_major(trt)
    if major >= 11:
        if fp16:
            log.warning("TensorRT %s is strongly typed and has no FP16 builder flag: building in the "
                        "ONNX graph's types (FP32)", trt.__version__)
        return "fp32 (strongly typed; FP16 needs an FP16 ONNX on TensorRT 11)"
    if fp16:
        if getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
            return "fp16 (BuilderFlag.FP16, mixed with fp32 where TensorRT prefers it)"
        log.warning("this GPU has no fast FP16: building FP32")
    return "fp32"


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors or 'no detail'}")


def _timing_cache_uri(cache_dir: str | None, trt: Any, facts: dict[str, Any]) -> str | None:
    """The cache file for this TensorRT version and GPU under ``cache_dir`` (a folder or ``s3://``)."""
    if not cache_dir:
        return None
    key = f"trt{trt.__version__}-{facts['gpu_name']}-sm{facts['compute_capability']}"
    safe = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in key)
    return storage.join(str(cache_dir), f"{safe}.timing-cache")


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, imgsz: int,
                 batch: tuple[int, int, int] = (1, 8, 16), dynamic_hw: bool = False, max_hw: int = 1280,
                 fp16: bool = True, workspace_gib: float = 4.0, timing_cache_dir: str | Path | None = None,
                 trt: Any = None, facts_fn: Callable[[], dict[str, Any]] = device_facts) -> dict[str, Any]:
    """Build ``engine_path`` from ``onnx_path``; returns the build facts for the model card.

    ``trt`` defaults to the real ``tensorrt`` module (a fake in unit tests); ``facts_fn`` gives the
    GPU facts. Raises :class:`EngineBuildError` when parsing or building fails.
    """
    if trt is None:
        trt, reason = tensorrt_status()
        if trt is None:
            raise EngineBuildError(f"cannot build a TensorRT engine here: {reason}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    facts = dict(facts_fn())
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, typing = _create_network(trt, builder)
    _parse(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    precision = _set_precision(trt, builder, config, fp16)
    shapes = _profile_shapes(imgsz, batch, dynamic_hw, max_hw)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, *shapes)
    config.add_optimization_profile(profile)
    cache_uri = _timing_cache_uri(str(timing_cache_dir) if timing_cache_dir else None, trt, facts)
    cache_hit = bool(cache_uri and storage.exists(cache_uri))
    if cache_uri is not None:
        cache = config.create_timing_cache(storage.read_bytes(cache_uri) if cache_hit else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    data = bytes(plan)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(engine_path, data)
    if cache_uri is not None:  # atomic, local or s3:// (storage.write_bytes)
        storage.write_bytes(cache_uri, bytes(config.get_timing_cache().serialize()))
    facts.update({
        "tensorrt_version": str(trt.__version__), "tensorrt_major": trt_major(trt), "typing": typing,
        "precision": precision, "profile": {"input": "images", "min": list(shapes[0]),
                                            "opt": list(shapes[1]), "max": list(shapes[2])},
        "timing_cache": cache_uri, "timing_cache_hit": cache_hit,
        "build_seconds": round(time.perf_counter() - start, 2), "engine_bytes": len(data),
        "engine_sha256": hashlib.sha256(data).hexdigest(), "file": engine_path.name})
    log.info("built TensorRT engine %s (%s, %s) in %.1f s", engine_path, facts["tensorrt_version"],
             precision, facts["build_seconds"])
    return facts


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TensorRTBackend:
    """A serialized engine of the export as a :class:`cocoseg.inference.Backend`.

    ``backend(x)``: (B, 3, S, S) float in [0, 1] -> the engine's ``pred`` / ``proto`` as float32
    torch tensors on ``device``, run ``max_batch`` images at a time (the profile's max batch) on
    a stream of its own. An engine of an export with in-graph NMS is refused: its ``keep`` output
    has a data-dependent shape and the predictor runs the one torch NMS itself. ``trt``: the
    ``tensorrt`` module (a fake in unit tests).
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, *, device: str = "cuda", trt: Any = None) -> None:
        import torch

        if trt is None:
            trt, reason = tensorrt_status()
            if trt is None:
                raise EngineBuildError(f"cannot run a TensorRT engine here: {reason}")
        self.trt, self.device = trt, torch.device(device)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if engine is None:
            raise EngineBuildError(f"{engine_path}: TensorRT could not deserialize the engine (another "
                                   "TensorRT version or GPU? rebuild it here)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if "keep" in self.outputs:
            raise EngineBuildError(f"{engine_path} holds the in-graph NMS output 'keep' (data-dependent shape); "
                                   "the predictor runs its own NMS: build the engine from an export without export.nms")
        if sorted(self.outputs) != ["pred", "proto"] or "images" not in names:
            raise EngineBuildError(f"{engine_path}: expected input 'images' and outputs 'pred', 'proto', got {names}")
        self.engine, self.context = engine, engine.create_execution_context()
        self.max_batch = int(engine.get_tensor_profile_shape("images", 0)[2][0])
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    def _dtype(self, name: str) -> Any:
        import torch

        kinds = {self.trt.DataType.FLOAT: torch.float32, self.trt.DataType.HALF: torch.float16,
                 self.trt.DataType.INT32: torch.int32, self.trt.DataType.INT64: torch.int64}
        bf16 = getattr(self.trt.DataType, "BF16", None)
        if bf16 is not None:
            kinds[bf16] = torch.bfloat16
        return kinds[self.engine.get_tensor_dtype(name)]

    def _run(self, x: Any) -> tuple[Any, Any]:
        import torch

        x = x.to(self.device, self._dtype("images")).contiguous()
        self.context.set_input_shape("images", tuple(x.shape))
        self.context.set_tensor_address("images", x.data_ptr())
        out = {}
        for name in self.outputs:
            out[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name),
                                    device=self.device)
            self.context.set_tensor_address(name, out[name].data_ptr())
        if self.stream is None:  # only a fake runtime runs on CPU tensors
            handle = 0
        else:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x is written on torch's stream
            handle = self.stream.cuda_stream
        if not self.context.execute_async_v3(handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
        if self.stream is not None:
            self.stream.synchronize()  # x and the outputs stay alive until the engine is done
        return out["pred"].float(), out["proto"].float()

    def __call__(self, x: Any) -> tuple[Any, Any]:
        import torch

        outs = [self._run(chunk) for chunk in x.split(self.max_batch)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
