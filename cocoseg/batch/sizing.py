"""The actor pool of ``evaluate`` and ``infer`` sized against the live cluster, before it starts.

Ray Data runs the pool's actors and its own read tasks on the same CPUs. Actors that take every
CPU leave the reads none, and the job then waits forever without a word (docs/architecture.md,
"Ray facts"). :func:`plan_pool` does the arithmetic first: the actors' CPUs (and GPUs) plus what the
reads need must fit the cluster, else one line names the keys and the largest setting that fits.

Defaults use the machine: ``evaluate.actors=0`` takes as many actors as the CPUs (less the
reads' share) hold, ``evaluate.threads_per_actor=0`` gives each actor its CPUs' worth of torch
threads. A private local Ray (no ``RAY_ADDRESS``) is started by :func:`local_ray_kwargs` with one
logical CPU more than the host's cores, for the reads (as ``pipelines.train`` does): on a 2-core
host that is 2 actors x 1 thread, every core busy with the model (docs/inference.md has the
measured rates).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cocoseg.config import ConfigError, JobConfig

__all__ = ["EVALUATE_READ_CPUS", "INFER_READ_CPUS", "Pool", "local_ray_kwargs", "plan_pool", "waiting_for"]

# What one running read task holds: evaluate's Parquet reads and repartition are Ray Data tasks of
# 1 CPU (its default); infer's image reads ask for 0.5 (cocoseg/batch/infer.py).
EVALUATE_READ_CPUS = 1.0
INFER_READ_CPUS = 0.5


@dataclass(frozen=True)
class Pool:
    """The actor pool a job starts: ``actors`` x (``cpus`` CPU, ``gpus`` GPU, ``threads`` torch threads)."""

    actors: int
    cpus: float
    gpus: int
    threads: int

    def describe(self) -> str:
        return (f"{self.actors} actor(s) x {self.cpus:g} CPU{f' + {self.gpus} GPU' if self.gpus else ''}, "
                f"{self.threads} thread(s) each")


def local_ray_kwargs(read_cpus: float) -> dict[str, Any]:
    """``start_ray`` arguments: the cluster in ``RAY_ADDRESS`` as it is, else a private local Ray
    with the host's cores plus logical CPUs for the read tasks."""
    if os.environ.get("RAY_ADDRESS"):
        return {"log_to_driver": False}
    cores = os.cpu_count() or 1
    return {"address": "local", "num_cpus": cores + math.ceil(read_cpus), "include_dashboard": False,
            "log_to_driver": False}


def plan_pool(cfg: JobConfig, resources: Mapping[str, float], read_cpus: float, rows: int = 0) -> Pool:
    """The pool for ``cfg.evaluate`` on a cluster with ``resources`` (``ray.cluster_resources()``);
    :class:`ConfigError` (one line, the largest setting that fits) when it cannot run. ``rows``
    (when known, > 0): an automatic pool (``evaluate.actors=0``) gets no more actors than the
    ``rows`` make batches: each actor is a process that loads the model before its first batch."""
    e = cfg.evaluate
    total_cpu, total_gpu = float(resources.get("CPU", 0.0)), int(resources.get("GPU", 0.0))
    room = total_cpu - read_cpus  # what the actors may take and still leave the reads theirs
    if e.use_gpu:
        if total_gpu < 1:
            raise ConfigError("evaluate.use_gpu=true but the cluster has no GPU; set evaluate.use_gpu=false or add "
                              "GPU nodes")
        actors = e.actors or total_gpu
        if actors > total_gpu:
            raise ConfigError(f"evaluate.actors={actors} with evaluate.use_gpu=true needs {actors} GPUs, the cluster "
                              f"has {total_gpu}; set evaluate.actors={total_gpu} (or 0: one per GPU)")
    else:
        actors = e.actors or max(1, math.floor(room / e.cpus_per_actor + 1e-9))
    need = actors * e.cpus_per_actor + read_cpus
    if need > total_cpu + 1e-9:
        fit_actors = math.floor(room / e.cpus_per_actor + 1e-9)
        fit_cpus = math.floor(room / actors * 100) / 100 if room > 0 else 0.0
        fixes = [f"evaluate.actors={fit_actors}"] if fit_actors >= 1 else []
        if fit_cpus > 0:
            fixes.append(f"evaluate.cpus_per_actor={fit_cpus:g}")
        fix = " or ".join(fixes) if fixes else "add CPUs to the cluster"
        raise ConfigError(
            f"evaluate.actors={actors} x evaluate.cpus_per_actor={e.cpus_per_actor:g} CPU + {read_cpus:g} CPU for Ray "
            f"Data's read tasks = {need:g} CPUs, the cluster has {total_cpu:g}: the reads would never run and the job "
            f"would wait forever; set {fix}")
    if rows > 0 and not e.actors:
        actors = max(1, min(actors, math.ceil(rows / e.batch_size)))
    threads = e.threads_per_actor or max(1, math.ceil(e.cpus_per_actor))
    return Pool(actors=actors, cpus=e.cpus_per_actor, gpus=1 if e.use_gpu else 0, threads=threads)


def waiting_for(pool: Pool, read_cpus: float, available: Mapping[str, float], total: Mapping[str, float]) -> str:
    """What a job with no progress waits for, in words (the stall watchdog's line)."""
    gpu = f", {available.get('GPU', 0.0):g} of {total.get('GPU', 0.0):g} GPUs" if pool.gpus else ""
    return (f"{pool.describe()} and Ray Data's read tasks ({read_cpus:g} CPU each); the cluster has "
            f"{available.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPUs free{gpu}. Free CPUs 0 means the "
            "actors and other jobs hold them all: lower evaluate.actors / evaluate.cpus_per_actor, or stop the "
            "other work; free CPUs with no progress: the actors are still loading the model or a read is slow")
