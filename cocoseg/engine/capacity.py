"""Capacity model: how many CPU cores of decode + augmentation keep one GPU busy, and what a run needs.

One table of figures, used by the train job's dry-run feed check
(:func:`cocoseg.engine.checks.check_feed`) and by ``docs/scaling.md``; the numbers in the doc are
this module's output (``python -m cocoseg.engine.capacity`` prints them).

Figures and where they come from:

- :data:`CPU_MS_PER_IMAGE`: CPU milliseconds per image to decode a COCO-sized JPEG, augment it
  with a preset and format it to model input at 640 px (one thread, one process, no Ray),
  **measured** by ``tests/benchmarks/bench_augment.py`` (the input stage of issue 21: OpenCV and
  simplejpeg) on COCO-shaped synthetic images (:func:`cocoseg.ingest.synthetic.write_coco_like`),
  side by side with the reference's dataset class; see ``docs/scaling.md`` and
  ``docs/input-pipeline.md`` for the run.
- :data:`GPU_TRAIN_IMAGES_PER_S`: training images/s per GPU at 640 px, bf16. **Not measured** (no
  GPU run of ``make gpu-check`` yet): estimated from the reference's GFLOPs per image at 640
  (``../shared/reference/yolov8-seg-reference.json``, ``docs_gflops``, the spec's section 13) as
  ``1 / (3 x GFLOPs / SUSTAINED_TFLOPS + OVERHEAD_MS)``: forward + backward ~3x the forward FLOPs
  at :data:`SUSTAINED_TFLOPS` (about 16 % of an A100's 312 bf16 TFLOP/s peak) plus a fixed
  per-image cost for loss, assigner and optimiser step. Cross-check: YOLOv5's README gives 300
  COCO epochs in 1 day (v5n) to 8 days (v5x, 205.7 GFLOPs) on one V100, i.e. ~51 images/s for v5x;
  scaled by GFLOPs to v8x-seg (344) and by ~2x for an A100 that is ~60 images/s, against 46 here
  (so the estimate errs towards fewer images/s, i.e. fewer CPUs per GPU for x; the small models'
  real rate is bounded by the input pipeline, which is exactly what this model sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "COCO_TRAIN_IMAGES",
    "CPU_MS_PER_IMAGE",
    "GPU_BF16_TFLOPS",
    "NODE_TYPES",
    "GPU_GFLOPS_640",
    "GPU_TRAIN_IMAGES_PER_S",
    "HEADROOM",
    "FeedPlan",
    "NodeType",
    "RunPlan",
    "gpu_kind",
    "run_plan",
    "cpu_ms_per_image",
    "feed_plan",
    "gpu_images_per_s",
]

# Measured 2026-12-06 11:44-11:50 UTC (bench_augment.py --rounds 3 --synthetic 128: COCO-shaped images, 640 px,
# 1 thread, process CPU time, median of 3 rounds; load average 43-77 on the shared 2-core host,
# which inflates CPU time, so these err towards more actors). The Pillow stage before issue 21
# measured 16.1 / 9.8 / 3.4 (2026-12-04, load 20).
CPU_MS_PER_IMAGE: dict[str, float] = {"yolov8": 6.7, "yolov8-close": 5.1, "val": 3.1}
# The part of that cost that does not scale with the output side: the full-size JPEG decode
# (cocoseg.data.decode.decode_rgb of a COCO-sized image, simplejpeg; same run).
DECODE_MS_PER_IMAGE = 1.9

# GFLOPs per image at 640 (reference docs convention; yolov8-seg-reference.json "docs_gflops").
GPU_GFLOPS_640: dict[str, float] = {"n": 12.6, "s": 42.6, "m": 110.2, "l": 220.5, "x": 344.1}
SUSTAINED_TFLOPS = 50.0  # A100-class GPU, bf16 autocast, batch 16-32 per GPU (an assumption, see above)
OVERHEAD_MS = 1.0  # loss + assigner + optimiser step per image on the GPU (an assumption)
GPU_TRAIN_IMAGES_PER_S: dict[str, float] = {
    v: round(1000.0 / (3 * g / SUSTAINED_TFLOPS + OVERHEAD_MS), 0) for v, g in GPU_GFLOPS_640.items()}
# Dense bf16 (V100: fp16) tensor TFLOP/s from the vendors' data sheets; another GPU's rate is the
# A100 figure scaled by its ratio (an assumption: small convnets are partly memory bound).
GPU_BF16_TFLOPS: dict[str, float] = {"A100": 312.0, "H100": 989.0, "L40S": 362.0, "L4": 121.0, "V100": 125.0}
# Decode + augment capacity asked for per unit of GPU demand: actor calls, Parquet reads, the
# object store and the train worker's collate cost CPU too, and chunks arrive unevenly.
HEADROOM = 1.25


def gpu_kind(name: str) -> str:
    """A GPU name (Ray's ``accelerator_type:<name>``, ``nvidia-smi``'s) -> a key of
    :data:`GPU_BF16_TFLOPS`, or ``"A100"`` when unknown (the figures' own GPU)."""
    upper = name.upper()
    for kind in sorted(GPU_BF16_TFLOPS, key=len, reverse=True):  # L40S before L4
        if kind in upper:
            return kind
    return "A100"


def gpu_images_per_s(variant: str, imgsz: int = 640, gpu: str = "A100") -> float:
    """Estimated training images/s of one ``gpu``: the FLOPs scale with the pixel count, the fixed
    per-image overhead does not (so small inputs do not promise absurd rates)."""
    if variant not in GPU_GFLOPS_640:
        raise ValueError(f"unknown model.variant {variant!r}; choose from {', '.join(GPU_GFLOPS_640)}")
    scale = GPU_BF16_TFLOPS[gpu_kind(gpu)] / GPU_BF16_TFLOPS["A100"]
    return scale * 1000.0 / (3 * GPU_GFLOPS_640[variant] * (imgsz / 640) ** 2 / SUSTAINED_TFLOPS + OVERHEAD_MS)


def cpu_ms_per_image(preset: str, imgsz: int = 640) -> float:
    """CPU ms to decode + augment + format one image: the decode at full size, the rest by output area."""
    if preset not in CPU_MS_PER_IMAGE:
        raise ValueError(f"unknown train.augment {preset!r}; choose from {', '.join(CPU_MS_PER_IMAGE)}")
    work = CPU_MS_PER_IMAGE[preset] - DECODE_MS_PER_IMAGE
    return DECODE_MS_PER_IMAGE + work * (imgsz / 640) ** 2


@dataclass(frozen=True)
class FeedPlan:
    """Supply and demand of training images per second for one run's configuration."""

    variant: str
    gpus: int
    imgsz: int
    preset: str
    demand_images_per_s: float  # all GPUs together
    supply_images_per_s: float  # all input actors together
    cores_needed: float  # CPU cores of input actors for demand x HEADROOM

    @property
    def ratio(self) -> float:
        """Supply over demand: below 1 the GPUs wait for data."""
        return self.supply_images_per_s / self.demand_images_per_s

    @property
    def actors_needed(self) -> int:
        return max(1, math.ceil(self.cores_needed))


def feed_plan(*, variant: str, gpus: int, imgsz: int, preset: str, data_actors: int,
              data_cpus_per_actor: float, gpu: str = "A100") -> FeedPlan:
    """The input actors' decode + augment rate against what ``gpus`` GPUs consume.

    An actor uses up to ``min(1, data_cpus_per_actor)`` core's worth of the figures (its work is
    mostly one thread of Python, numpy and libjpeg-turbo; OpenCV's warps would use more threads,
    but the figures do not count on it, so more logical CPUs reserve cores it barely uses).
    """
    demand = gpus * gpu_images_per_s(variant, imgsz, gpu)
    per_core = 1000.0 / cpu_ms_per_image(preset, imgsz)
    supply = data_actors * min(1.0, data_cpus_per_actor) * per_core
    return FeedPlan(variant=variant, gpus=gpus, imgsz=imgsz, preset=preset, demand_images_per_s=demand,
                    supply_images_per_s=supply, cores_needed=demand * HEADROOM / per_core)


COCO_TRAIN_IMAGES = 118_287
COCO_BYTES_PER_IMAGE = 163_000  # 19.3 GB of train2017 JPEGs / 118,287; the snapshot keeps the bytes as they are
# S3 reads one CPU node is asked to sustain (an assumption: an m6i.4xlarge has 12.5 Gbit/s burst and
# about 5 sustained, 625 MB/s; this keeps a third of that free). Since issue 21 an actor decodes
# ~2.4x the images it did, so a node's network, not its cores, can bound the actors it holds.
S3_MB_PER_S_PER_NODE = 400.0


@dataclass(frozen=True)
class NodeType:
    name: str
    gpu: str
    gpus: int
    vcpus: int


NODE_TYPES: dict[str, NodeType] = {n.name: n for n in (
    NodeType("p4d.24xlarge", "A100", 8, 96), NodeType("g6.12xlarge", "L4", 4, 48),
    NodeType("m6i.4xlarge", "", 0, 16))}


@dataclass(frozen=True)
class RunPlan:
    """GPU nodes, input actors, CPU nodes and S3 reads for ``epochs`` over ``images`` within ``hours``."""

    variant: str
    node: str
    gpu_nodes: int
    gpus: int  # scaling.num_workers
    images_per_s: float
    hours: float
    data_actors: int  # data.actors (1 CPU each)
    cpu_nodes: int  # CPU-group nodes that hold the actors
    s3_mb_per_s_per_cpu_node: float


def run_plan(variant: str, node: str, *, epochs: int = 300, images: int = COCO_TRAIN_IMAGES, hours: float = 24.0,
             ddp_efficiency: float = 0.9, other_time: float = 0.1, read_amplification: float = 2.7,
             cpu_node: str = "m6i.4xlarge") -> RunPlan:
    """Whole GPU nodes of type ``node`` for the run to end within ``hours``; the input actors on
    ``cpu_node`` nodes of the CPU group (2 vCPUs of each left to the system, and no more than
    :data:`S3_MB_PER_S_PER_NODE` of snapshot reads per node), where the RayCluster of ``infra/k8s``
    schedules them (its GPU pods hold the train workers only).

    ``other_time``: share of the wall time not spent in train steps (validation, checkpoints, epoch
    edges); ``ddp_efficiency``: per-GPU rate kept under DDP; ``read_amplification``: encoded bytes
    read per byte used: 1 MB row groups (~6 COCO images) read by chunks of four 4-row runs mixed over
    the epoch (``data.chunk_runs`` 4): ~2.7x, counted by ``epoch_chunks`` over the actors' 4-group
    caches; whole 16-row chunks (``data.chunk_runs=1``): 1.25x, measured (see ``ChunkAugmenter``).
    """
    kind = NODE_TYPES[node]
    per_gpu = gpu_images_per_s(variant, 640, kind.gpu) * ddp_efficiency
    need = epochs * images / (hours * 3600 * (1 - other_time))
    nodes = math.ceil(need / (per_gpu * kind.gpus))
    rate = nodes * kind.gpus * per_gpu
    # actors for the GPUs' full rate (no DDP discount), as the train job's feed check counts them
    actors = math.ceil(rate / ddp_efficiency * HEADROOM * CPU_MS_PER_IMAGE["yolov8"] / 1000)
    s3_total = rate * COCO_BYTES_PER_IMAGE * read_amplification / 1e6
    cpu_nodes = max(math.ceil(actors / (NODE_TYPES[cpu_node].vcpus - 2)), math.ceil(s3_total / S3_MB_PER_S_PER_NODE))
    s3 = s3_total / cpu_nodes
    return RunPlan(variant=variant, node=node, gpu_nodes=nodes, gpus=nodes * kind.gpus, images_per_s=rate,
                   hours=epochs * images / rate / 3600 / (1 - other_time), data_actors=actors, cpu_nodes=cpu_nodes,
                   s3_mb_per_s_per_cpu_node=s3)


def _plan_table() -> str:
    lines = ["| variant | GPU nodes | GPUs (scaling.num_workers) | est. img/s | est. hours | data.actors | "
             "m6i.4xlarge for the actors | S3 MB/s per actor node |", "|---|---|---|---|---|---|---|---|"]
    for variant in ("n", "x"):
        for node in ("g6.12xlarge", "p4d.24xlarge"):
            p = run_plan(variant, node)
            lines.append(f"| {variant} | {p.gpu_nodes} x {node} | {p.gpus} | {p.images_per_s:.0f} | {p.hours:.1f} | "
                         f"{p.data_actors} | {p.cpu_nodes} | {p.s3_mb_per_s_per_cpu_node:.0f} |")
    return "\n".join(lines)


TABLE_GPUS = ("L4", "A100", "H100")


def _table() -> str:
    cores = " | ".join(f"CPU cores per {g}" for g in TABLE_GPUS)
    lines = [f"| variant | GFLOPs/img @640 | est. train img/s per A100 @640 | {cores} |",
             "|---|---|---|" + "---|" * len(TABLE_GPUS)]
    for v, g in GPU_GFLOPS_640.items():
        need = [feed_plan(variant=v, gpus=1, imgsz=640, preset="yolov8", data_actors=1, data_cpus_per_actor=1,
                          gpu=gpu).cores_needed for gpu in TABLE_GPUS]
        lines.append(f"| {v} | {g} | {GPU_TRAIN_IMAGES_PER_S[v]:.0f} | " + " | ".join(f"{c:.1f}" for c in need) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_table())
    print()
    print(_plan_table())
