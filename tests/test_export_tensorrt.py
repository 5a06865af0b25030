"""TensorRT engine build: the 10.x / 11.x branching against a small fake of the ``tensorrt``
module's surface (CPU), and the real build on a CUDA device (GPU-marked, skips without one)."""

from __future__ import annotations

import enum
import importlib.util
from pathlib import Path

import pytest
import torch
from export_helpers import TinySeg

from cocoseg.export import EngineBuildError, build_engine, export_onnx

FACTS = {"gpu_name": "Fake GPU 80GB", "compute_capability": "9.0", "cuda_version": "12.8"}


def make_fake_trt(version: str, *, parse_ok: bool = True, build_ok: bool = True):
    """The attributes the builder touches, recording every call in ``calls``."""
    calls: list[tuple] = []
    major = int(version.split(".")[0])

    class Logger:
        WARNING = 2

        def __init__(self, level):
            calls.append(("Logger", level))

    flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if major < 11 else {"STRONGLY_TYPED": 1}
    builder_flags = {"FP16": 0, "INT8": 1, "TF32": 2} if major < 11 else {"TF32": 2}

    class Input:
        name = "images"

    class Network:
        def get_input(self, i):
            return Input()

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse_from_file", Path(path).name))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported"

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))

        def add_optimization_profile(self, profile):
            calls.append(("add_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, lo, opt, hi))

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build",))
            return b"PLAN-" + version.encode() if build_ok else None

    fake = type("tensorrt", (), {})()
    fake.__version__ = version
    fake.Logger, fake.Builder, fake.OnnxParser = Logger, Builder, Parser
    fake.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags, start=0)
    fake.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    fake.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    fake.calls = calls
    return fake


def _names(calls):
    return [c[0] for c in calls]


def test_trt10_weakly_typed_with_fp16_flag_profile_and_timing_cache(tmp_path):
    trt = make_fake_trt("10.16.1.11")
    cache_dir = tmp_path / "cache"
    facts = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", imgsz=640, batch=(1, 4, 8), fp16=True,
                         workspace_gib=2, timing_cache_dir=cache_dir, trt=trt, facts_fn=lambda: FACTS)
    assert ("create_network", 0) in trt.calls  # 10.x: explicit batch implied, weakly typed
    assert ("set_flag", "FP16") in trt.calls
    assert ("pool", 0, 2 << 30) in trt.calls
    assert ("set_shape", "images", (1, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640)) in trt.calls
    assert (tmp_path / "m.engine").read_bytes() == b"PLAN-10.16.1.11"
    assert facts["tensorrt_major"] == 10 and facts["typing"] == "weak" and facts["precision"].startswith("fp16")
    assert facts["gpu_name"] == "Fake GPU 80GB" and facts["compute_capability"] == "9.0"
    assert facts["timing_cache_hit"] is False and facts["profile"]["max"] == [8, 3, 640, 640]
    cache_file = Path(facts["timing_cache"])  # a local folder: the URI is its path
    assert cache_file.parent == cache_dir and cache_file.read_bytes() == b"+tuned"
    assert "10.16.1.11" in cache_file.name and "sm9.0" in cache_file.name

    again = make_fake_trt("10.16.1.11")
    facts2 = build_engine(tmp_path / "m.onnx", tmp_path / "m2.engine", imgsz=640, timing_cache_dir=cache_dir,
                          trt=again, facts_fn=lambda: FACTS)
    assert facts2["timing_cache_hit"] is True
    assert ("create_timing_cache", b"+tuned") in again.calls
    assert cache_file.read_bytes() == b"+tuned+tuned"


def test_the_timing_cache_lives_on_s3_when_the_storage_root_does(tmp_path, s3_bucket):
    """``<storage.root>/cache/tensorrt`` with an ``s3://`` root: read and written through the
    storage layer (``Path`` would have made it a local folder named ``s3:``)."""
    from cocoseg import storage

    cache_dir = storage.join(s3_bucket, "cache", "tensorrt")
    facts = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", imgsz=640, timing_cache_dir=cache_dir,
                         trt=make_fake_trt("10.16.1.11"), facts_fn=lambda: FACTS)
    assert facts["timing_cache"].startswith(f"{cache_dir}/") and storage.read_bytes(facts["timing_cache"]) == b"+tuned"
    again = build_engine(tmp_path / "m.onnx", tmp_path / "m2.engine", imgsz=640, timing_cache_dir=cache_dir,
                         trt=make_fake_trt("10.16.1.11"), facts_fn=lambda: FACTS)
    assert again["timing_cache_hit"] is True and storage.read_bytes(facts["timing_cache"]) == b"+tuned+tuned"
    assert not any(p.name.startswith("s3") for p in tmp_path.rglob("*"))


def test_trt10_fp32_sets_no_precision_flag(tmp_path):
    trt = make_fake_trt("10.3.0")
    facts = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", imgsz=320, fp16=False, trt=trt,
                         facts_fn=lambda: FACTS)
    assert "set_flag" not in _names(trt.calls) and facts["precision"] == "fp32"
    assert "create_timing_cache" not in _names(trt.calls) and facts["timing_cache"] is None


def test_trt11_strongly_typed_never_touches_precision_flags(tmp_path):
    trt = make_fake_trt("11.4.0.106")
    assert not hasattr(trt.BuilderFlag, "FP16")  # the fake matches 11.x: the flag would raise
    facts = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", imgsz=640, fp16=True, dynamic_hw=True,
                         max_hw=1024, trt=trt, facts_fn=lambda: FACTS)
    assert ("create_network", 1 << 1) in trt.calls  # STRONGLY_TYPED
    assert "set_flag" not in _names(trt.calls)
    assert facts["typing"] == "strong" and "strongly typed" in facts["precision"]
    assert ("set_shape", "images", (1, 3, 32, 32), (8, 3, 640, 640), (16, 3, 1024, 1024)) in trt.calls


def test_parser_and_builder_failures_are_clear(tmp_path):
    with pytest.raises(EngineBuildError, match=r"could not parse .*m.onnx: In node 3 \(Conv\)"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", imgsz=64, trt=make_fake_trt("10.0.1", parse_ok=False),
                     facts_fn=lambda: FACTS)
    with pytest.raises(EngineBuildError, match="failed to build"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", imgsz=64, trt=make_fake_trt("11.0.0", build_ok=False),
                     facts_fn=lambda: FACTS)
    assert not (tmp_path / "m.engine").exists()
    with pytest.raises(Exception, match="min <= opt <= max"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", imgsz=64, batch=(4, 2, 8),
                     trt=make_fake_trt("10.0.1"), facts_fn=lambda: FACTS)


def make_fake_runtime(model, *, max_batch: int, outputs=("pred", "proto")):
    """The runtime surface TensorRTBackend touches, on CPU: the "engine" runs ``decode(model(x))``
    on the tensors at the addresses it is given, as a real engine reads and writes device memory."""
    import ctypes

    import numpy as np

    from cocoseg.model import decode

    fake = type("tensorrt", (), {})()
    fake.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    fake.DataType = enum.Enum("DataType", "FLOAT HALF INT32 INT64")
    fake.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    names = ["images", *outputs]

    def view(address, shape):
        return np.ctypeslib.as_array((ctypes.c_float * int(np.prod(shape))).from_address(address)).reshape(shape)

    class Context:
        def __init__(self):
            self.shape, self.addresses, self.runs = None, {}, []

        def set_input_shape(self, name, shape):
            assert name == "images" and 1 <= shape[0] <= max_batch
            self.shape = shape

        def get_tensor_shape(self, name):
            b, _, h, w = self.shape
            return {"pred": (b, 4 + 3 + 32, (h // 8) * (w // 8) + (h // 16) * (w // 16) + (h // 32) * (w // 32)),
                    "proto": (b, 32, h // 4, w // 4)}[name]

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            x = torch.from_numpy(view(self.addresses["images"], self.shape).copy())
            with torch.no_grad():
                pred, proto = decode(model(x))
            view(self.addresses["pred"], tuple(pred.shape))[:] = pred.numpy()
            view(self.addresses["proto"], tuple(proto.shape))[:] = proto.numpy()
            self.runs.append(self.shape[0])
            return True

    class Engine:
        num_io_tensors = len(names)
        context = Context()

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return fake.TensorIOMode.INPUT if name == "images" else fake.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return fake.DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile):
            return (1, 3, 64, 64), (1, 3, 64, 64), (max_batch, 3, 64, 64)

        def create_execution_context(self):
            return self.context

    fake.engine = Engine()
    fake.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                        "deserialize_cuda_engine": lambda self, data: fake.engine})
    return fake


def test_engine_backend_binds_chunks_and_goes_through_the_one_predictor(tmp_path):
    """TensorRTBackend's binding logic on CPU against a fake runtime: the predictor gets the eager
    detections, batches larger than the profile run in chunks, an in-graph NMS engine is refused."""
    from cocoseg.export.bench import bench_image
    from cocoseg.export.tensorrt import TensorRTBackend
    from cocoseg.inference import Predictor

    model = TinySeg().eval()
    (tmp_path / "model.engine").write_bytes(b"PLAN")
    fake = make_fake_runtime(model, max_batch=2)
    backend = TensorRTBackend(tmp_path / "model.engine", device="cpu", trt=fake)
    images = [bench_image(64), bench_image(64)[:40, :50], bench_image(64)[5:, 3:]]
    got = Predictor(backend, class_names=["a", "b", "c"], imgsz=64, conf=0.3).predict(images)
    eager = Predictor(model, class_names=["a", "b", "c"], imgsz=64, conf=0.3).predict(images)
    assert fake.engine.context.runs == [2, 1]
    for g, e in zip(got, eager, strict=True):
        assert len(e) > 0 and g.classes.tolist() == e.classes.tolist()
        torch.testing.assert_close(g.boxes_xyxy, e.boxes_xyxy, atol=1e-4, rtol=0)
        assert torch.equal(g.masks, e.masks)
    with pytest.raises(EngineBuildError, match="in-graph NMS"):
        TensorRTBackend(tmp_path / "model.engine", device="cpu",
                        trt=make_fake_runtime(model, max_batch=2, outputs=("pred", "proto", "keep")))


HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRT), reason="needs a CUDA device and tensorrt")
def test_real_engine_build_and_run(tmp_path):
    import numpy as np

    from cocoseg.export.bench import bench_image, bench_predictor
    from cocoseg.export.tensorrt import TensorRTBackend
    from cocoseg.inference import Predictor
    from cocoseg.model import decode

    model = TinySeg().eval()
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, num_classes=3, imgsz=64)
    facts = build_engine(onnx_path, tmp_path / "model.engine", imgsz=64, batch=(1, 2, 4), fp16=False,
                         timing_cache_dir=tmp_path / "cache")
    assert facts["engine_bytes"] > 0 and facts["gpu_name"] and facts["compute_capability"]
    # The engine as a backend of the one predictor: its outputs are the eager decode's (TF32 kernels
    # on both sides, hence the tolerance), in chunks of the profile's max batch (4), and the
    # predictor turns them into detections.
    backend = TensorRTBackend(tmp_path / "model.engine")
    x = torch.rand(5, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    pred, proto = backend(x)
    with torch.no_grad():
        want_pred, want_proto = decode(model.cuda()(x))
    torch.testing.assert_close(pred, want_pred, atol=0.05, rtol=1e-2)
    torch.testing.assert_close(proto, want_proto, atol=0.05, rtol=1e-2)
    trt_predictor = Predictor(backend, class_names=["a", "b", "c"], imgsz=64, conf=0.3)
    (det,) = trt_predictor.predict([bench_image(64)])
    assert len(det) > 0 and det.masks is not None
    assert np.isfinite(bench_predictor(trt_predictor, bench_image(64), warmup=1, runs=3))
