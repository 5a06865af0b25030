"""GPU check (issue 9.5): one table of what the project does on a CUDA machine, within ~6 minutes.

    make gpu-wheels                          # here: the project's extra needs as wheels in .whl/
    make gpu-check                           # on the GPU machine (see docs/gpu-check.md)
    python tests/benchmarks/gpu_check.py --cpu-dry-run [--json OUT]    # same code paths, tiny, CPU

Rows, each run independently (a failure prints its reason and the next row runs):

- ``pytest -m gpu``: the CUDA-marked tests (only the files that carry the mark are collected);
- ``train <variant> b<batch> [compile]``: bf16-autocast train steps of n and s at 640, batch 16
  and 32, channels_last, through the project's own ``train_step`` (real loss, optimiser, EMA),
  eager and with ``torch.compile`` (``nn.Module.compile``, so EMA and state-dict keys stay as
  they are): images/s and peak CUDA memory;
- ``ddp nccl 1 rank``: one single-rank DistributedDataParallel train step;
- ``onnx export + ort parity``: export from the CUDA model, onnxruntime against the CPU eager
  model (the project's parity check) and against the CUDA eager output;
- ``reference <variant> b<batch>``: the reference's images/s on the same batch and settings, only
  when ``ultralytics`` (and its imports) are importable, in a separate process.

The compile rows run last, in a child process bounded by what is left of ``--budget-s``; rows
left when the budget is spent are reported as skipped. ``--cpu-dry-run`` runs every row on the
CPU at 64 px, batch 2, one timed step, gloo instead of NCCL and the ``eager`` compile backend
(dynamo tracing without code generation); it is a test in the normal suite.

Only the standard library, torch, numpy, onnx, onnxruntime and pytest are assumed; the rest
comes from the unpacked wheels under ``--wheels`` (default ``.whl``), added to ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEEL_CAP_MB = 30.0
TAG = "@@row "


@dataclass
class Row:
    name: str
    status: str = "ok"  # ok | FAIL | skip
    images_per_s: float | None = None
    peak_mem_gib: float | None = None
    seconds: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class Plan:
    device: str
    imgsz: int
    batches: tuple[int, ...]
    variants: tuple[str, ...]
    warmup: int
    steps: int
    ddp_backend: str
    compile_backend: str
    dry_run: bool
    extra: dict = field(default_factory=dict)


def make_plan(dry_run: bool) -> Plan:
    if dry_run:
        return Plan("cpu", 64, (2,), ("n",), 1, 1, "gloo", "eager", True)
    return Plan("cuda", 640, (16, 32), ("n", "s"), 3, 10, "nccl", "inductor", False)


# ---------------------------------------------------------------- wheels
def check_wheel_size(folder: Path, cap_mb: float = WHEEL_CAP_MB) -> float:
    """Total size of ``folder/*.whl`` in MB; raises SystemExit naming the biggest ones past the cap."""
    wheels = sorted(folder.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)
    if not wheels:
        raise SystemExit(f"{folder}: no wheels; run `make gpu-wheels` first")
    total = sum(p.stat().st_size for p in wheels) / 1e6
    listing = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in wheels)
    if total > cap_mb:
        raise SystemExit(f"{folder}: wheels total {total:.1f} MB > the {cap_mb:.0f} MB cap ({listing}); "
                         "drop the optional ones (GPU_REF=0) or the biggest")
    print(f"{folder}: {len(wheels)} wheels, {total:.1f} MB (cap {cap_mb:.0f} MB): {listing}")
    return total


def unpack_wheels(folder: Path) -> Path | None:
    """Unzip every wheel into ``folder/site`` once (no pip needed) and put it first on sys.path."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return None
    site = folder / "site"
    stamp = site / ".unpacked"
    names = "\n".join(p.name for p in wheels)
    if not stamp.exists() or stamp.read_text() != names:
        site.mkdir(parents=True, exist_ok=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(site)
        stamp.write_text(names)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return site


def _ensure_project(site: Path | None) -> str:
    """cocoseg from the unpacked wheels when they hold it, else from this checkout (never from an
    unrelated install elsewhere on the machine)."""
    if site is None or not (site / "cocoseg").is_dir():
        sys.path.insert(0, str(REPO))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    import cocoseg

    return str(Path(cocoseg.__file__).parent)


# ---------------------------------------------------------------- rows
def synthetic_batch(batch: int, imgsz: int, per_image: int = 6, seed: int = 0):
    """uint8 images and ``per_image`` square instances per image, masks painted on the 1/4 grid
    and given at the default ``train.mask_ratio`` (each cell repeated 4 / ratio times per side)."""
    import torch

    from cocoseg.config import TrainConfig
    from cocoseg.structures import SegTargets, TrainBatch

    gen = torch.Generator().manual_seed(seed)
    grid = imgsz // 4
    n = per_image * batch
    centres = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    half = max(grid // 16, 1)
    masks = torch.zeros(batch, grid, grid, dtype=torch.int32)
    for i in range(n):  # fixture, not the measured path
        cx, cy = (centres[i] * grid).long().tolist()
        masks[i // per_image, max(cy - half, 0):cy + half, max(cx - half, 0):cx + half] = i % per_image + 1
    up = 4 // TrainConfig().mask_ratio
    masks = masks.to(torch.uint8).repeat_interleave(up, 1).repeat_interleave(up, 2)
    images = torch.randint(0, 255, (batch, 3, imgsz, imgsz), dtype=torch.uint8, generator=gen)
    targets = SegTargets(batch_idx=torch.arange(batch).repeat_interleave(per_image),
                         cls=torch.randint(0, 80, (n,), generator=gen),
                         boxes_cxcywh_norm=torch.cat([centres, torch.full((n, 2), 2 * half / grid)], 1), masks=masks)
    return TrainBatch(images, targets)


def _peak_mem_gib(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS on the CPU


def _parts(model, batch: int, steps: int, device, ddp_model=None):
    import torch

    from cocoseg.engine.ema import ModelEMA
    from cocoseg.engine.loop import TrainParts
    from cocoseg.engine.optim import Schedule, build_optimizer
    from cocoseg.loss import SegmentationLoss

    schedule = Schedule(epochs=1, batches_per_epoch=steps, global_batch=batch, warmup_epochs=0)
    return TrainParts(model=ddp_model or model, loss_fn=SegmentationLoss.from_model(model),
                      optimizer=build_optimizer(model), schedule=schedule, ema=ModelEMA(model),
                      device=device, amp_dtype=torch.bfloat16)


def _timed_steps(parts, data, plan: Plan) -> dict:
    import torch

    from cocoseg.engine.loop import LoopState, train_step

    state = LoopState()
    for _ in range(plan.warmup):
        train_step(parts, data, state)
    sync = torch.cuda.synchronize if parts.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(plan.steps):
        terms = train_step(parts, data, state)
    sync()
    seconds = time.perf_counter() - start
    batch = int(data.images.shape[0])
    return {"images_per_s": batch * plan.steps / seconds, "peak_mem_gib": _peak_mem_gib(parts.device),
            "note": f"loss terms finite: {all(v == v for v in terms.values())}"}


def row_train(plan: Plan, variant: str, batch: int, compiled: bool) -> dict:
    import torch

    from cocoseg.model import build_model

    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(variant, 80).to(device).to(memory_format=torch.channels_last)
    if compiled:
        model.compile(backend=plan.compile_backend)  # in place: EMA and state-dict keys unchanged
    data = synthetic_batch(batch, plan.imgsz)
    out = _timed_steps(_parts(model, batch, plan.warmup + plan.steps, device), data, plan)
    if compiled:
        out["note"] += f"; backend {plan.compile_backend}, warm-up steps include the compile"
    return out


def row_ddp(plan: Plan) -> dict:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from cocoseg.model import build_model

    device = torch.device(plan.device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as tmp:
        dist.init_process_group(plan.ddp_backend, init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1)
        try:
            model = build_model("n", 80).to(device).to(memory_format=torch.channels_last)
            ddp = DDP(model, device_ids=[0] if device.type == "cuda" else None)
            batch = plan.batches[0]
            out = _timed_steps(_parts(model, batch, plan.warmup + plan.steps, device, ddp_model=ddp),
                               synthetic_batch(batch, plan.imgsz), plan)
            out["note"] = f"backend {dist.get_backend()}, batch {batch}; " + out["note"]
        finally:
            dist.destroy_process_group()
    return out


def row_onnx(plan: Plan) -> dict:
    import copy

    import numpy as np
    import onnxruntime as ort
    import torch

    from cocoseg.export import export_onnx
    from cocoseg.export.onnx import ExportWrapper
    from cocoseg.export.parity import check_parity, parity_input
    from cocoseg.model import build_model

    device = torch.device(plan.device)
    model = build_model("n", 80).to(device).eval()
    x = parity_input(1, plan.imgsz)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 reference
    try:
        with torch.no_grad():
            wrapper = ExportWrapper(model, num_classes=80, nms=False).eval()
            eager = [t.float().cpu().numpy() for t in wrapper(x.to(device))]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    with tempfile.TemporaryDirectory(prefix="gpu-check-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(copy.deepcopy(model), path, num_classes=80, imgsz=plan.imgsz)
        report = check_parity(copy.deepcopy(model), path, num_classes=80, imgsz=plan.imgsz, batches=(1, 2))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"images": x.numpy()})
    worst = max(float(np.abs(g - e).max() / max(np.abs(e).max(), 1e-12)) for g, e in zip(got, eager, strict=True))
    if worst > 1e-3:
        raise AssertionError(f"onnxruntime differs from the {device.type} eager model by {worst:.2e} of the "
                             "largest output (tolerance 1e-3)")
    cpu_abs = max(report.max_abs.values())
    return {"note": f"ort vs cpu eager max|d| {cpu_abs:.2e}; ort vs {device.type} eager {worst:.2e} (relative)"}


def row_tests(plan: Plan, timeout: float) -> dict:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if re.search(r"mark\.gpu\b", p.read_text()))
    if not files:
        raise AssertionError("no test file carries the gpu mark")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *files]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode != 0:
        raise AssertionError(f"rc {proc.returncode}: {summary}\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return {"note": f"{len(files)} files: {summary}"}


REFERENCE_SCRIPT = r'''
import json, os, sys, time
os.environ.setdefault("YOLO_OFFLINE", "1")
import torch
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
plan = json.loads(sys.argv[1])
dev = torch.device(plan["device"])
for variant in plan["variants"]:
    for b in plan["batches"]:
        try:
            if dev.type == "cuda":
                torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
            model = YOLO(f"yolov8{variant}-seg.yaml").model
            model.args = get_cfg()
            model = model.to(dev).to(memory_format=torch.channels_last).train()
            g = torch.Generator().manual_seed(0)
            n, s = 6 * b, plan["imgsz"] // 4
            batch = {"img": torch.rand(b, 3, plan["imgsz"], plan["imgsz"], generator=g).to(dev).contiguous(memory_format=torch.channels_last),
                     "batch_idx": torch.arange(b).repeat_interleave(6).float().to(dev),
                     "cls": torch.randint(0, 80, (n, 1), generator=g).float().to(dev),
                     "bboxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.full((n, 2), 0.12)], 1).to(dev),
                     "masks": torch.randint(0, 7, (b, s, s), generator=g).float().to(dev)}
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.937, nesterov=True)
            def step():
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    loss, _ = model.loss(batch)
                opt.zero_grad(set_to_none=True); loss.sum().backward(); opt.step()
            for _ in range(plan["warmup"]): step()
            if dev.type == "cuda": torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(plan["steps"]): step()
            if dev.type == "cuda": torch.cuda.synchronize()
            sec = time.perf_counter() - t
            mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
            row = {"name": f"reference {variant} b{b}", "images_per_s": b * plan["steps"] / sec, "peak_mem_gib": mem,
                   "note": "ultralytics " + __import__("ultralytics").__version__ + ", optimizer step every batch"}
        except Exception as exc:
            row = {"name": f"reference {variant} b{b}", "status": "FAIL", "note": f"{type(exc).__name__}: {exc}"[:300]}
        print("@@row " + json.dumps(row), flush=True)
'''


def rows_reference(plan: Plan, timeout: float) -> list[Row]:
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        return [Row("reference", "skip", note="ultralytics not importable (carry it: make gpu-wheels GPU_REF=1)")]
    spec = {"device": plan.device, "imgsz": plan.imgsz, "batches": list(plan.batches),
            "variants": list(plan.variants), "warmup": plan.warmup, "steps": plan.steps}
    return _child_rows([sys.executable, "-c", REFERENCE_SCRIPT, json.dumps(spec)], timeout, "reference")


def _child_rows(cmd: list[str], timeout: float, what: str) -> list[Row]:
    """Rows a child process prints as TAG lines; a timeout or crash becomes a row of its own."""
    rows: list[Row] = []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, rc = f"timed out after {timeout:.0f} s (time budget)", None
    for line in out.splitlines():
        if line.startswith(TAG):
            rows.append(Row(**json.loads(line[len(TAG):])))
    if rc != 0:
        tail = (err or "").strip().splitlines()[-1:] or [""]
        rows.append(Row(f"{what} (process)", "FAIL" if rc is not None else "skip", note=f"rc {rc}: {tail[0][:300]}"))
    return rows


# ---------------------------------------------------------------- driver
ONLY = re.compile("")  # --rows: run only the rows whose name matches


def run_row(rows: list[Row], name: str, fn, deadline: float, broken: set[str]) -> None:
    """Run one row; any exception becomes a FAIL row with its reason, never stops the check."""
    if not ONLY.search(name):
        return
    if time.monotonic() > deadline:
        rows.append(Row(name, "skip", note="time budget spent"))
        return
    start = time.perf_counter()
    try:
        if name in broken:
            raise RuntimeError("failure injected with --break (checks that rows fail independently)")
        result = fn() or {}
        rows.append(Row(name, result.get("status", "ok"), result.get("images_per_s"), result.get("peak_mem_gib"),
                        round(time.perf_counter() - start, 1), result.get("note", "")))
    except Exception as exc:  # a row reports its own failure; the next row still runs
        traceback.print_exc(limit=3, file=sys.stderr)
        first = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        rows.append(Row(name, "FAIL", seconds=round(time.perf_counter() - start, 1), note=first))


def compile_rows(plan: Plan, broken: set[str]) -> list[Row]:
    rows: list[Row] = []
    for variant in plan.variants:
        for batch in plan.batches:
            name = f"train {variant} b{batch} compile"
            run_row(rows, name, lambda v=variant, b=batch: row_train(plan, v, b, True), float("inf"), broken)
            print(TAG + json.dumps(asdict(rows[-1])), flush=True)
    return rows


def _cpu_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def table(rows: list[Row], header: str) -> str:
    lines = [header, "| row | status | images/s | peak mem GiB | s | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        ips = f"{r.images_per_s:.1f}" if r.images_per_s is not None else "-"
        mem = f"{r.peak_mem_gib:.2f}" if r.peak_mem_gib is not None else "-"
        lines.append(f"| {r.name} | {r.status} | {ips} | {mem} | {r.seconds} | {r.note.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every row on the CPU at tiny sizes")
    parser.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget of the whole check")
    parser.add_argument("--wheels", default=str(REPO / ".whl"), help="folder of carried wheels")
    parser.add_argument("--check-wheels", action="store_true", help="only check the wheels' total size")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--rows", default="", help="regular expression: run only the rows it matches")
    parser.add_argument("--break", dest="broken", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_wheels:
        check_wheel_size(Path(args.wheels))
        return 0
    started = time.monotonic()
    deadline = started + args.budget_s
    site = unpack_wheels(Path(args.wheels))
    where = _ensure_project(site)
    plan = make_plan(args.cpu_dry_run)
    broken = set(args.broken)
    global ONLY
    ONLY = re.compile(args.rows)
    if args.compile_child:
        compile_rows(plan, broken)
        return 0
    import torch

    if plan.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (torch.cuda.is_available() is False): run with --cpu-dry-run on a CPU machine")
        return 2
    rows: list[Row] = []
    remaining = lambda: max(deadline - time.monotonic(), 1.0)  # noqa: E731
    run_row(rows, "pytest -m gpu", lambda: row_tests(plan, remaining() if plan.dry_run else min(150.0, remaining())), deadline, broken)
    for variant in plan.variants:
        for batch in plan.batches:
            run_row(rows, f"train {variant} b{batch}", lambda v=variant, b=batch: row_train(plan, v, b, False),
                    deadline, broken)
    run_row(rows, f"ddp {plan.ddp_backend} 1 rank", lambda: row_ddp(plan), deadline, broken)
    run_row(rows, "onnx export + ort parity", lambda: row_onnx(plan), deadline, broken)
    if ONLY.search("reference"):
        rows += rows_reference(plan, min(120.0, remaining())) if time.monotonic() < deadline else \
            [Row("reference", "skip", note="time budget spent")]
    if ONLY.search("compile"):
        child = [sys.executable, __file__, "--compile-child", "--wheels", args.wheels, "--rows", args.rows,
                 *sum((["--break", b] for b in broken), []), *(["--cpu-dry-run"] if plan.dry_run else [])]
        rows += _child_rows(child, remaining(), "compile")
    device = torch.cuda.get_device_name(0) if plan.device == "cuda" else "cpu (dry run)"
    header = (f"GPU check on {device}, torch {torch.__version__}, imgsz {plan.imgsz}, bf16 autocast, channels_last, "
              f"{plan.steps} timed steps after {plan.warmup} warm-up; cocoseg from {where}"
              f"{'; wheels ' + str(site) if site else ''}; {time.monotonic() - started:.0f} s wall, "
              f"{_cpu_seconds():.0f} s CPU, load average {os.getloadavg()[0]:.1f}")
    print(table(rows, header))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
