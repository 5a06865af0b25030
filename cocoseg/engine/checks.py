"""Checks that ``pipelines.train`` runs before any worker starts, and how it starts Ray.

Every refusal is a :class:`TrainInputError` (a :class:`~cocoseg.utils.UserError`) that says what
is wrong and how to fix it.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ray

from cocoseg import storage
from cocoseg.config import JobConfig
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


def resolve_snapshot(cfg: JobConfig) -> Manifest:
    """The manifest of ``train.snapshot`` ("latest" or empty: newest under ``storage.root``).

    Refuses a missing snapshot or manifest, an unknown schema version, and an empty train or
    val split.
    """
    uri = cfg.train.snapshot
    try:
        if uri in ("", "latest"):
            uri = latest_snapshot(cfg.storage.root)
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
    if manifest.num_classes != cfg.model.num_classes:
        raise TrainInputError(f"snapshot {uri} has {manifest.num_classes} classes but model.num_classes="
                              f"{cfg.model.num_classes}; set model.num_classes={manifest.num_classes}")
    return manifest


def _data_cpus(cfg: JobConfig) -> float:
    # The input actors, plus one CPU for Ray Data's read tasks (without a free CPU they are never
    # scheduled and the job hangs: docs/architecture.md, "Ray facts"), plus, with asynchronous
    # validation, its tasks and their actor pools (engine/validation.py: each task holds
    # validation.cpus_per_actor, as each actor does).
    v = cfg.validation
    val = v.concurrency * (v.actors + 1) * v.cpus_per_actor if v.mode == "async" else 0.0
    return cfg.data.actors * cfg.data.cpus_per_actor + 1 + val


def ray_init_kwargs(cfg: JobConfig) -> dict[str, Any]:
    """``ray.init`` arguments: the cluster in ``RAY_ADDRESS``, else a private local Ray.

    A local Ray gets enough *logical* CPUs for the train workers plus the Ray Data actors: on a
    2-core laptop the workers and the data stage then share the cores instead of deadlocking.
    """
    s = cfg.scaling
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return {"address": address}
    need = s.num_workers * s.cpus_per_worker + _data_cpus(cfg)
    return {"address": "local", "num_cpus": max(os.cpu_count() or 1, math.ceil(need)), "include_dashboard": False}


def ensure_ray(cfg: JobConfig) -> None:
    """Start Ray (per :func:`ray_init_kwargs`) unless this process is already connected; the
    start-up is retried once, then reported in one line (``cocoseg.cluster.start_ray``)."""
    from cocoseg.cluster import start_ray

    start_ray(**ray_init_kwargs(cfg))


def scaling_workers(cfg: JobConfig) -> int | tuple[int, int]:
    """``ScalingConfig(num_workers=...)``: an int (fixed group), or ``(min, max)`` (elastic: Ray
    Train V2 restarts the group on what the cluster can still place, down to ``min``)."""
    s = cfg.scaling
    return (s.min_workers, s.num_workers) if 0 < s.min_workers < s.num_workers else s.num_workers


def _placeable(cfg: JobConfig) -> tuple[int, int]:
    """(workers the live nodes can hold now, live nodes)."""
    s = cfg.scaling
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_node = [min(math.floor(n.get("CPU", 0.0) / s.cpus_per_worker),
                    math.floor(n.get("GPU", 0.0)) if s.use_gpu else 1 << 30) for n in nodes]
    if s.placement_strategy == "STRICT_SPREAD":
        return sum(1 for k in per_node if k >= 1), len(nodes)
    if s.placement_strategy == "STRICT_PACK":
        return max(per_node, default=0), len(nodes)
    return sum(per_node), len(nodes)


def lost_capacity(cfg: JobConfig) -> TrainInputError | None:
    """After a failed fit: the one-line error when the cluster can no longer place the smallest
    group the config allows (a node was lost), else None (the failure was something else)."""
    s = cfg.scaling
    need = s.min_workers or s.num_workers
    try:
        slots, alive = _placeable(cfg)
    except Exception:  # Ray itself is gone: not this diagnosis
        return None
    if slots >= need:
        return None
    return TrainInputError(
        f"the cluster can no longer place the worker group: its {alive} live node(s) hold {slots} worker(s) of "
        f"{s.cpus_per_worker:g} CPU{' + 1 GPU' if s.use_gpu else ''} ({s.placement_strategy}), the run needs "
        f"{need} (scaling.min_workers={s.min_workers or s.num_workers}); add nodes, or set scaling.min_workers={max(slots, 1)} "
        "to go on with fewer, then rerun with the same tracking.run_name to resume")


def check_feed(cfg: JobConfig, gpu: str = "A100") -> str:
    """Dry-run feed check, a pure function of the config (and the GPU kind, ``A100`` unless the
    cluster says): ``""`` when the input actors can feed the GPUs by :mod:`cocoseg.engine.capacity`'s
    figures (or the run is on CPUs), else a one-line warning. Raises :class:`TrainInputError` when
    they make less than ``FEED_REFUSE_BELOW`` of the demand."""
    t, m, s = cfg.train, cfg.model, cfg.scaling
    if not s.use_gpu:
        return ""
    plan = feed_plan(variant=m.variant, gpus=s.num_workers, imgsz=m.imgsz, preset=t.augment,
                     data_actors=cfg.data.actors, data_cpus_per_actor=cfg.data.cpus_per_actor, gpu=gpu)
    if plan.ratio >= 1.0:
        return ""
    fix = (f"set data.actors={plan.actors_needed} with data.cpus_per_actor=1 (one core each, "
           "any node; docs/scaling.md)")
    message = (f"data.actors={cfg.data.actors} x data.cpus_per_actor={cfg.data.cpus_per_actor:g} decode + "
               f"augment ~{plan.supply_images_per_s:.0f} img/s (train.augment={t.augment}, model.imgsz={m.imgsz}) but "
               f"{s.num_workers} {gpu_kind(gpu)} GPU(s) of model.variant={m.variant} take ~{plan.demand_images_per_s:.0f} img/s "
               f"(estimate): the GPUs would wait {100 * (1 - plan.ratio):.0f}% of the time; {fix}")
    if plan.ratio < FEED_REFUSE_BELOW:
        raise TrainInputError(message)
    return message


def check_cluster(cfg: JobConfig) -> None:
    """Refuse a worker group the cluster can never place (CPUs, GPUs, STRICT_SPREAD nodes), then
    input actors that cannot feed its GPUs (:func:`check_feed`, with the cluster's GPU kind; a
    shortfall under 2x only warns)."""
    s = cfg.scaling
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
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
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    if total_cpu < s.num_workers * s.cpus_per_worker + _data_cpus(cfg):
        raise TrainInputError(
            f"{s.num_workers} workers x {s.cpus_per_worker:g} CPU + Ray Data ({cfg.data.actors} actors x "
            f"{cfg.data.cpus_per_actor:g} CPU + 1 for reads"
            + (f" + validation {cfg.validation.concurrency} x ({cfg.validation.actors} actors + its task) x "
               f"{cfg.validation.cpus_per_actor:g} CPU" if cfg.validation.mode == "async" else "")
            + f") exceed the cluster's {total_cpu:g} CPUs, and the data stage would wait forever; lower "
            "scaling.cpus_per_worker, data.actors, data.cpus_per_actor or validation.cpus_per_actor")
    kinds = [k.split(":", 1)[1] for n in nodes for k in n if k.startswith("accelerator_type:")]
    warning = check_feed(cfg, kinds[0] if kinds else "A100")  # after placement: that error comes first
    if warning:
        log.warning("%s", warning)
