"""Checks that ``pipelines.train`` runs before any worker starts, and how it starts Ray.

Every refusal is a :class:`TrainInputError` (a :class:`~cocoseg.utils.UserError`) that says what
is wrong and how to fix it. Each function takes the config sections it reads (``cfg.scaling``,
``cfg.data``, ...), not the whole :class:`~cocoseg.config.JobConfig`; passing that gets one line
naming the sections.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import ray

from cocoseg import storage
from cocoseg.config import (
    DataStageConfig,
    JobConfig,
    ModelConfig,
    ScalingConfig,
    StorageConfig,
    TrainConfig,
    ValidationConfig,
)
from cocoseg.data.schema import Manifest, SnapshotError, latest_snapshot, read_manifest
from cocoseg.engine.capacity import feed_plan, gpu_kind
from cocoseg.utils import UserError, get_logger

__all__ = ["FEED_REFUSE_BELOW", "TrainInputError", "check_cluster", "check_feed", "ensure_ray", "lost_capacity", "ray_init_kwargs", "resolve_snapshot",
           "scaling_workers"]


log = get_logger(__name__)

# Input actors that make less than this share of what the GPUs consume leave them idle most of the
# time: refused. Between it and 1: a warning. The GPU side is an estimate (cocoseg.engine.capacity),
# hence the margin.
FEED_REFUSE_BELOW = 0.5


class TrainInputError(UserError):
    """Training cannot start with this input or on this cluster."""


F = TypeVar("F", bound=Callable[..., Any])


def _sections(fn: F) -> F:
    """A caller still passing the whole ``JobConfig`` gets one line naming the sections to pass."""
    names = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD
             and n != "gpu"]

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], JobConfig):
            raise TypeError(f"{fn.__name__} takes the config sections it reads, not the whole JobConfig: "
                            f"{fn.__name__}({', '.join('cfg.' + _SECTION.get(n, n) for n in names)})")
        return fn(*args, **kwargs)

    return checked  # type: ignore[return-value]


_SECTION = {"storage_cfg": "storage"}  # parameter -> JobConfig section, where they differ


@_sections
def resolve_snapshot(train: TrainConfig, storage_cfg: StorageConfig, model: ModelConfig) -> Manifest:
    """The manifest of ``train.snapshot`` ("latest" or empty: newest under ``storage.root``).

    Refuses a missing snapshot or manifest, an unknown schema version, an empty train or val
    split, and classes other than ``model.num_classes``.
    """
    uri = train.snapshot
    try:
        if uri in ("", "latest"):
            uri = latest_snapshot(storage_cfg.root)
        elif not storage.exists(uri):
            raise TrainInputError(f"train.snapshot {uri} does not exist; pass the snapshot URI that "
                                  "`cocoseg ingest` printed (…/snapshots/<id>) or train.snapshot=latest")
        manifest = read_manifest(uri)
    except SnapshotError as exc:
        raise TrainInputError(f"train.snapshot: {exc}") from None
    splits = manifest.splits
    for split in ("train", "val"):
        if split not in splits:
            raise TrainInputError(f"snapshot {uri} has no {split!r} split (it has {', '.join(splits) or 'none'}); "
                                  f"ingest a source with a {split} split")
        if splits[split].images == 0:
            raise TrainInputError(f"snapshot {uri}: the {split!r} split is empty (0 images); "
                                  "check the source and the quarantine (_quarantine.parquet)")
    if manifest.num_classes != model.num_classes:
        raise TrainInputError(f"snapshot {uri} has {manifest.num_classes} classes but model.num_classes="
                              f"{model.num_classes}; set model.num_classes={manifest.num_classes}")
    return manifest


def _val_slots(v: ValidationConfig) -> int:
    return 1 if v.in_task else v.actors + 1


def _data_cpus(data: DataStageConfig, validation: ValidationConfig) -> float:
    # The input actors, plus one CPU for Ray Data's read tasks (without a free CPU they are never
    # scheduled and the job hangs: docs/architecture.md, "Ray facts"), plus, with asynchronous
    # validation, its tasks and their actor pools (engine/validation.py: each task holds
    # validation.cpus_per_actor, as each actor does; a task that detects itself has no pool).
    v = validation
    val = v.concurrency * _val_slots(v) * v.cpus_per_actor if v.mode == "async" else 0.0
    return data.actors * data.cpus_per_actor + 1 + val


@_sections
def ray_init_kwargs(scaling: ScalingConfig, data: DataStageConfig, validation: ValidationConfig) -> dict[str, Any]:
    """``ray.init`` arguments: the cluster in ``RAY_ADDRESS``, else a private local Ray.

    A local Ray gets enough *logical* CPUs for the train workers plus the Ray Data actors: on a
    2-core laptop the workers and the data stage then share the cores instead of deadlocking.
    """
    s = scaling
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return {"address": address}
    need = s.num_workers * s.cpus_per_worker + _data_cpus(data, validation)
    return {"address": "local", "num_cpus": max(os.cpu_count() or 1, math.ceil(need)), "include_dashboard": False}


@_sections
def ensure_ray(scaling: ScalingConfig, data: DataStageConfig, validation: ValidationConfig) -> None:
    """Start Ray (per :func:`ray_init_kwargs`) unless this process is already connected; the
    start-up is retried once, then reported in one line (``cocoseg.cluster.start_ray``)."""
    from cocoseg.cluster import start_ray

    start_ray(**ray_init_kwargs(scaling, data, validation))


@_sections
def scaling_workers(scaling: ScalingConfig) -> int | tuple[int, int]:
    """``ScalingConfig(num_workers=...)``: an int (fixed group), or ``(min, max)`` (elastic: Ray
    Train V2 restarts the group on what the cluster can still place, down to ``min``)."""
    s = scaling
    return (s.min_workers, s.num_workers) if 0 < s.min_workers < s.num_workers else s.num_workers


def _placeable(scaling: ScalingConfig) -> tuple[int, int]:
    """(workers the live nodes can hold now, live nodes)."""
    s = scaling
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_node = [min(math.floor(n.get("CPU", 0.0) / s.cpus_per_worker),
                    math.floor(n.get("GPU", 0.0)) if s.use_gpu else 1 << 30) for n in nodes]
    if s.placement_strategy == "STRICT_SPREAD":
        return sum(1 for k in per_node if k >= 1), len(nodes)
    if s.placement_strategy == "STRICT_PACK":
        return max(per_node, default=0), len(nodes)
    return sum(per_node), len(nodes)


@_sections
def lost_capacity(scaling: ScalingConfig) -> TrainInputError | None:
    """After a failed fit: the one-line error when the cluster can no longer place the smallest
    group the config allows (a node was lost), else None (the failure was something else)."""
    s = scaling
    need = s.min_workers or s.num_workers
    try:
        slots, alive = _placeable(scaling)
    except Exception:  # Ray itself is gone: not this diagnosis
        return None
    if slots >= need:
        return None
    return TrainInputError(
        f"the cluster can no longer place the worker group: its {alive} live node(s) hold {slots} worker(s) of "
        f"{s.cpus_per_worker:g} CPU{' + 1 GPU' if s.use_gpu else ''} ({s.placement_strategy}), the run needs "
        f"{need} (scaling.min_workers={s.min_workers or s.num_workers}); add nodes, or set scaling.min_workers={max(slots, 1)} "
        "to go on with fewer, then rerun with the same tracking.run_name to resume")


@_sections
def check_feed(train: TrainConfig, model: ModelConfig, scaling: ScalingConfig, data: DataStageConfig,
               gpu: str = "A100") -> str:
    """Dry-run feed check, a pure function of the config (and the GPU kind, ``A100`` unless the
    cluster says): ``""`` when the input actors can feed the GPUs by :mod:`cocoseg.engine.capacity`'s
    figures (or the run is on CPUs), else a one-line warning. Raises :class:`TrainInputError` when
    they make less than ``FEED_REFUSE_BELOW`` of the demand."""
    t, m, s = train, model, scaling
    if not s.use_gpu:
        return ""
    plan = feed_plan(variant=m.variant, gpus=s.num_workers, imgsz=m.imgsz, preset=t.augment,
                     data_actors=data.actors, data_cpus_per_actor=data.cpus_per_actor, gpu=gpu)
    if plan.ratio >= 1.0:
        return ""
    fix = (f"set data.actors={plan.actors_needed} with data.cpus_per_actor=1 (one core each, "
           "any node; docs/scaling.md)")
    message = (f"data.actors={data.actors} x data.cpus_per_actor={data.cpus_per_actor:g} decode + "
               f"augment ~{plan.supply_images_per_s:.0f} img/s (train.augment={t.augment}, model.imgsz={m.imgsz}) but "
               f"{s.num_workers} {gpu_kind(gpu)} GPU(s) of model.variant={m.variant} take ~{plan.demand_images_per_s:.0f} img/s "
               f"(estimate): the GPUs would wait {100 * (1 - plan.ratio):.0f}% of the time; {fix}")
    if plan.ratio < FEED_REFUSE_BELOW:
        raise TrainInputError(message)
    return message


@_sections
def check_cluster(scaling: ScalingConfig, data: DataStageConfig, validation: ValidationConfig) -> str:
    """Refuse a worker group the cluster can never place (CPUs, GPUs, STRICT_SPREAD nodes) and a
    data stage its CPUs cannot hold; -> the cluster's GPU kind (``A100`` when it names none), for
    :func:`check_feed`, which the job runs next (after placement: that error comes first; a feed
    shortfall under 2x only warns)."""
    s = scaling
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    _check_placement(s, nodes)
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    if total_cpu < s.num_workers * s.cpus_per_worker + _data_cpus(data, validation):
        v = validation
        raise TrainInputError(
            f"{s.num_workers} workers x {s.cpus_per_worker:g} CPU + Ray Data ({data.actors} actors x "
            f"{data.cpus_per_actor:g} CPU + 1 for reads"
            + (f" + validation {v.concurrency} x ({'its task' if v.in_task else f'{v.actors} actors + its task'}) x "
               f"{v.cpus_per_actor:g} CPU" if v.mode == "async" else "")
            + f") exceed the cluster's {total_cpu:g} CPUs, and the data stage would wait forever; lower "
            "scaling.cpus_per_worker, data.actors, data.cpus_per_actor or validation.cpus_per_actor")
    kinds = [k.split(":", 1)[1] for n in nodes for k in n if k.startswith("accelerator_type:")]
    return kinds[0] if kinds else "A100"


def _check_placement(s: ScalingConfig, nodes: list[dict[str, float]]) -> None:
    per_worker = {"CPU": s.cpus_per_worker, "GPU": 1.0 if s.use_gpu else 0.0}
    fits = [n for n in nodes if all(n.get(k, 0.0) >= v for k, v in per_worker.items() if v)]
    hint = "lower scaling.num_workers / scaling.cpus_per_worker, or add nodes"
    if s.use_gpu and sum(n.get("GPU", 0.0) for n in nodes) < s.num_workers:
        raise TrainInputError(f"scaling.use_gpu with scaling.num_workers={s.num_workers} needs {s.num_workers} GPUs, "
                              f"the cluster has {sum(n.get('GPU', 0.0) for n in nodes):g}; {hint} or set scaling.use_gpu=false")
    if s.placement_strategy == "STRICT_SPREAD" and len(fits) < s.num_workers:
        raise TrainInputError(f"STRICT_SPREAD puts each of {s.num_workers} workers on its own node, but only "
                              f"{len(fits)} node(s) can hold a worker ({per_worker}); {hint} or use SPREAD")
    slots = sum(min(math.floor(n.get("CPU", 0.0) / s.cpus_per_worker),
                    math.floor(n.get("GPU", 0.0)) if s.use_gpu else 1 << 30) for n in nodes)
    if s.placement_strategy == "STRICT_PACK":
        slots = max((math.floor(n.get("CPU", 0.0) / s.cpus_per_worker) for n in fits), default=0)
    if slots < s.num_workers:
        raise TrainInputError(f"scaling.num_workers={s.num_workers} x {s.cpus_per_worker:g} CPU cannot be placed: the "
                              f"cluster can hold {slots} such worker(s) ({s.placement_strategy}); {hint}")
