"""The config edge: what every job checks and resolves once, on the driver, before Ray starts.

:mod:`cocoseg.config` checks each key alone (type, choice, range). This module is the layer
above it, run by each job's entry function (``train``, ``tune``, ``evaluate``, ``infer``,
``ingest``, ``export``) before anything is started:

- :func:`prepare` -> a config whose local paths are absolute (``storage.root``,
  ``train.snapshot``, ``model.weights``, ``ingest.source``/``dest``,
  ``export.timing_cache_dir``, a relative ``sqlite:///`` tracking store), so no worker, actor or
  trial depends on its working directory; ``s3://``, ``models:/`` and ``http(s)://`` pass
  through. It refuses, in one :class:`ConfigError` line naming every key involved and the fix:
  non-finite numbers, the ranges in :data:`RANGES`, and the failed cross-key :data:`CHECKS` of
  the job (rules a library below would otherwise assert, or a job that could never finish);
  then the paths that must exist (:func:`require`).
- :func:`ready` (called just before the job starts Ray) logs the job's :data:`WARNINGS` (legal
  but probably not meant: one line each) and, under ``cocoseg --check``, stops the job there
  with :class:`CheckOnly` (the CLI prints "config ok" and exits 0).

Imports only cocoseg.config and cocoseg.storage (and the augment presets' names, lazily).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

from cocoseg import storage
from cocoseg.config import ConfigError, JobConfig, with_values
from cocoseg.utils import get_logger

__all__ = ["CHECKS", "JOB_SECTIONS", "RANGES", "WARNINGS", "Check", "CheckOnly", "absolute", "check", "prepare",
           "ready", "require", "set_check_only"]

log = get_logger(__name__)

# The sections each job reads (the fuzz tests draw every key of these).
JOB_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("storage", "model", "train", "scaling", "data", "tracking"),
    "tune": ("storage", "model", "train", "scaling", "data", "tracking", "tune"),
    "evaluate": ("storage", "evaluate", "tracking"),
    "infer": ("storage", "evaluate"),
    "ingest": ("storage", "ingest"),
    "export": ("storage", "export"),
}


class CheckOnly(Exception):  # noqa: N818 (not an error: the end of a `--check` run)
    """Raised by :func:`ready` under ``cocoseg --check``: every check passed, nothing was started."""


_CHECK_ONLY = False


def set_check_only(on: bool) -> None:
    """``cocoseg --check``: jobs stop at :func:`ready`, before Ray starts."""
    global _CHECK_ONLY
    _CHECK_ONLY = bool(on)


# --------------------------------------------------------------------------------------------
# Single-key ranges that config.py does not check (it is at its size limit): key -> (ok, rule).

def _between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)


_SEED = (_between(0, 2**32 - 1), "must be an integer in [0, 2**32 - 1]")
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "storage.root": (lambda v: bool(v.strip()), "must not be empty (a folder or an s3:// URI)"),
    "model.imgsz": (lambda v: v <= 4096, "must be at most 4096"),
    "train.epochs": (lambda v: v <= 100_000, "must be at most 100000"),
    "train.batch_size": (lambda v: v <= 4096, "must be at most 4096 per worker"),
    "train.nominal_batch": (_between(1, 1 << 16), "must be >= 1 (the batch the recipe's lr and decay assume)"),
    "train.lr0": (_between(0, 10, lo_open=True), "must be in (0, 10]"),
    "train.lrf": (_between(0, 1, lo_open=True), "must be in (0, 1] (the final LR as a fraction of lr0)"),
    "train.momentum": (_between(0, 1, hi_open=True), "must be in [0, 1)"),
    "train.weight_decay": (_between(0, 1), "must be in [0, 1]"),
    "train.warmup_epochs": (_between(0, 100_000), "must be >= 0 (0: no warm-up)"),
    "train.warmup_momentum": (_between(0, 1, hi_open=True), "must be in [0, 1)"),
    "train.warmup_bias_lr": (_between(0, 10), "must be in [0, 10]"),
    "train.ema_decay": (_between(0, 1, hi_open=True), "must be in [0, 1)"),
    "train.ema_tau": (lambda v: v > 0, "must be > 0 (optimiser steps)"),
    "train.val_batch_size": (_between(0, 4096), "must be in [0, 4096] (0: twice train.batch_size)"),
    "train.preview_images": (_between(0, 64), "must be in [0, 64]"),
    "train.seed": _SEED,
    "train.time_budget_h": (lambda v: v is None or 0 <= v <= 8760, "must be in [0, 8760] hours (0 or null: off)"),
    "scaling.num_workers": (lambda v: v <= 4096, "must be at most 4096"),
    "scaling.threads_per_worker": (_between(0, 1024), "must be in [0, 1024] (0: cpus_per_worker rounded up)"),
    "data.actors": (lambda v: v <= 4096, "must be at most 4096"),
    "tracking.experiment": (lambda v: bool(v.strip()), "must not be empty"),
    "tracking.system_metrics_interval_s": (lambda v: v > 0, "must be > 0 seconds"),
    "ingest.read_parallelism": (lambda v: v == -1 or 1 <= v <= 65536, "must be -1 (as the cluster allows) or >= 1"),
    "export.max_hw": (lambda v: 32 <= v <= 8192 and v % 32 == 0, "must be a multiple of 32 in [32, 8192]"),
    "export.workspace_gib": (lambda v: v > 0, "must be > 0"),
    "export.max_batch": (lambda v: v <= 4096, "must be at most 4096"),
    "evaluate.imgsz": (lambda v: v <= 4096, "must be at most 4096 (0: the model card's)"),
    "evaluate.batch_size": (lambda v: v <= 4096, "must be at most 4096"),
    "evaluate.actors": (lambda v: v <= 4096, "must be at most 4096 (0: as the cluster allows)"),
    "evaluate.threads_per_actor": (_between(0, 1024), "must be in [0, 1024] (0: use the actor's CPUs)"),
    "evaluate.stall_warn_s": (lambda v: v > 0, "must be > 0 seconds"),
    "tune.num_trials": (lambda v: v <= 100_000, "must be at most 100000"),
    "tune.seed": _SEED,
}


def _value(cfg: JobConfig, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def _check_values(cfg: JobConfig, sections: tuple[str, ...]) -> None:
    """Finite numbers everywhere, then :data:`RANGES`: the first failure as one line."""
    for section in sections:
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{f.name}: must be a finite number, got {value}")
    for key, (ok, rule) in RANGES.items():
        if key.split(".", 1)[0] in sections and hasattr(getattr(cfg, key.split(".")[0]), key.split(".", 1)[1]):
            value = _value(cfg, key)
            if not ok(value):
                raise ConfigError(f"{key}: {rule}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Cross-key checks: each returns None when fine, else the one-line message (keys, values, fix).


@dataclass(frozen=True)
class Check:
    """A named rule over several keys, for the jobs in ``jobs``."""

    name: str
    jobs: frozenset[str]
    keys: tuple[str, ...]
    test: Callable[[JobConfig], str | None]


def _epochs(cfg: JobConfig, job: str) -> tuple[int, str]:
    """Epochs one run trains and the key that sets them (a trial trains tune.epochs)."""
    if job == "tune" and cfg.tune.epochs:
        return cfg.tune.epochs, f"tune.epochs={cfg.tune.epochs}"
    return cfg.train.epochs, f"train.epochs={cfg.train.epochs}"


def _asha_grace(cfg: JobConfig) -> str | None:
    t = cfg.tune
    max_t = t.epochs or cfg.train.epochs
    if t.grace_period <= max_t:
        return None
    where = f"tune.epochs={t.epochs}" if t.epochs else f"tune.epochs=0 (so train.epochs={cfg.train.epochs})"
    return (f"tune.grace_period={t.grace_period} is more than the epochs each trial trains ({where}); ASHA needs "
            f"grace_period <= epochs: set tune.grace_period={max_t} or less, or raise tune.epochs")


def _augment(cfg: JobConfig) -> str | None:
    from cocoseg.data.augment import PRESETS

    if cfg.train.augment in PRESETS:
        return None
    return f"train.augment={cfg.train.augment!r} is not a preset; set train.augment to one of {', '.join(PRESETS)}"


def _workers_images(cfg: JobConfig) -> str | None:
    n, w = cfg.data.max_train_images, cfg.scaling.num_workers
    if n == 0 or n >= w:
        return None
    return (f"data.max_train_images={n} is fewer than scaling.num_workers={w}: a worker would get no image and "
            f"wait forever; set data.max_train_images={w} or more, or scaling.num_workers={n}")


def _threads_vs_cpus(cfg: JobConfig) -> str | None:
    s = cfg.scaling
    if s.threads_per_worker <= max(1, math.ceil(s.cpus_per_worker)) * 4:
        return None
    return (f"scaling.threads_per_worker={s.threads_per_worker} is over 4x scaling.cpus_per_worker="
            f"{s.cpus_per_worker:g}: the threads would only wait on each other; set scaling.threads_per_worker="
            f"{math.ceil(s.cpus_per_worker)} (or 0)")


def _export_backends(cfg: JobConfig) -> str | None:
    e = cfg.export
    if e.exporter == "dynamo" and e.nms:
        return ("export.nms=true with export.exporter=dynamo: in-graph NMS is written by the torchscript exporter "
                "only; set export.exporter=torchscript or export.nms=false")
    if e.exporter == "dynamo" and find_spec("onnxscript") is None:
        return ("export.exporter=dynamo needs the 'onnxscript' package, not importable here; set "
                "export.exporter=torchscript or install onnxscript")
    return None


def _export_hw(cfg: JobConfig) -> str | None:
    e = cfg.export
    if not e.dynamic_hw or not e.imgsz or e.imgsz <= e.max_hw:
        return None
    return (f"export.imgsz={e.imgsz} is above export.max_hw={e.max_hw} with export.dynamic_hw=true: the TensorRT "
            f"profile could not hold it; set export.max_hw={e.imgsz} or more")


def _budget_tune(cfg: JobConfig) -> str | None:
    if not cfg.train.time_budget_h:
        return None
    return (f"train.time_budget_h={cfg.train.time_budget_h:g} with the tune job: each trial would re-plan its own "
            f"epochs from its speed, so ASHA would compare trials of different schedules; set train.time_budget_h=0 "
            f"(a trial's length is tune.epochs)")


CHECKS: tuple[Check, ...] = (
    Check("asha-grace-period", frozenset({"tune"}), ("tune.grace_period", "tune.epochs", "train.epochs"), _asha_grace),
    Check("time-budget-vs-tune", frozenset({"tune"}), ("train.time_budget_h", "tune.epochs"), _budget_tune),
    Check("augment-preset", frozenset({"train", "tune"}), ("train.augment",), _augment),
    Check("workers-vs-images", frozenset({"train", "tune"}), ("data.max_train_images", "scaling.num_workers"),
          _workers_images),
    Check("threads-vs-cpus", frozenset({"train", "tune"}), ("scaling.threads_per_worker", "scaling.cpus_per_worker"),
          _threads_vs_cpus),
    Check("export-backends", frozenset({"export"}), ("export.formats", "export.exporter", "export.nms"), _export_backends),
    Check("export-profile-hw", frozenset({"export"}), ("export.imgsz", "export.max_hw", "export.dynamic_hw"), _export_hw),
)


# --------------------------------------------------------------------------------------------
# Warnings: legal, but probably not what was meant. One line each, logged by :func:`ready`.


def _close_mosaic(cfg: JobConfig, job: str) -> str | None:
    from cocoseg.data.augment import PRESETS

    epochs, key = _epochs(cfg, job)
    preset = PRESETS.get(cfg.train.augment)
    if preset is None or not preset.mosaic or cfg.train.close_mosaic < epochs:
        return None
    return (f"train.close_mosaic={cfg.train.close_mosaic} >= {key}: no epoch uses mosaic; set train.close_mosaic "
            f"below {epochs} to use it")


def _warmup(cfg: JobConfig, job: str) -> str | None:
    epochs, key = _epochs(cfg, job)
    if cfg.train.warmup_epochs <= epochs:
        return None
    return (f"train.warmup_epochs={cfg.train.warmup_epochs:g} > {key}: the learning rate never reaches train.lr0; "
            f"set train.warmup_epochs={max(epochs // 3, 0)} or less")


def _val_every(cfg: JobConfig, job: str) -> str | None:
    epochs, key = _epochs(cfg, job)
    if cfg.train.val_every <= epochs or epochs == 1:
        return None
    return f"train.val_every={cfg.train.val_every} > {key}: only the last epoch is validated"


def _accumulation(cfg: JobConfig, job: str) -> str | None:
    t, s = cfg.train, cfg.scaling
    if t.batch_size * s.num_workers <= t.nominal_batch:
        return None
    return (f"train.batch_size={t.batch_size} x scaling.num_workers={s.num_workers} = {t.batch_size * s.num_workers} "
            f"is above train.nominal_batch={t.nominal_batch}: no gradient accumulation, and the recipe's lr0 was "
            f"tuned for {t.nominal_batch}; raise train.nominal_batch or lower train.batch_size")


def _trials(cfg: JobConfig, job: str) -> str | None:
    t = cfg.tune
    if t.max_concurrent_trials <= t.num_trials:
        return None
    return (f"tune.max_concurrent_trials={t.max_concurrent_trials} > tune.num_trials={t.num_trials}: at most "
            f"{t.num_trials} trial(s) run at once")


def _engine_backend(cfg: JobConfig, job: str) -> str | None:
    if "engine" not in cfg.export.formats or find_spec("tensorrt") is not None:
        return None
    return ("export.formats includes 'engine' but the 'tensorrt' package is not importable here: only ONNX is "
            "exported; run on a GPU host with cocoseg[tensorrt] for the engine, or set export.formats=[onnx]")


def _eval_threads(cfg: JobConfig, job: str) -> str | None:
    e = cfg.evaluate
    if e.use_gpu or e.threads_per_actor <= max(1, math.ceil(e.cpus_per_actor)):
        return None
    return (f"evaluate.threads_per_actor={e.threads_per_actor} > evaluate.cpus_per_actor={e.cpus_per_actor:g}: "
            "the actors' threads oversubscribe their CPUs; set evaluate.threads_per_actor=0 (the actor's CPUs)")


WARNINGS: tuple[tuple[frozenset[str], Callable[[JobConfig, str], str | None]], ...] = (
    (frozenset({"train", "tune"}), _close_mosaic),
    (frozenset({"train", "tune"}), _warmup),
    (frozenset({"train", "tune"}), _val_every),
    (frozenset({"train", "tune"}), _accumulation),
    (frozenset({"tune"}), _trials),
    (frozenset({"evaluate", "infer"}), _eval_threads),
    (frozenset({"export"}), _engine_backend),
)


# --------------------------------------------------------------------------------------------
# Paths


def _is_uri(value: str) -> bool:
    return "://" in value or value.startswith("models:/")


def absolute(value: str) -> str:
    """A local path made absolute (``~`` expanded); URIs (``s3://``, ``models:/``, ``http://``,
    ``file://``) and ``""`` as they are."""
    if not value or _is_uri(value):
        return value
    return os.path.abspath(os.path.expanduser(value))


def _sqlite_absolute(uri: str) -> str:
    """``sqlite:///rel.db`` (relative to the working directory) -> ``sqlite:////abs/rel.db``."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/") or uri == prefix + ":memory:":
        return uri
    return prefix + os.path.abspath(uri[len(prefix):])


def require(uri: str, key: str, what: str, fix: str) -> None:
    """Refuse (one line) a local path or ``s3://`` URI that does not exist; ``key`` names it."""
    if not uri or uri.startswith("models:/") or uri.startswith(("http://", "https://")):
        return
    try:
        found = storage.exists(uri)
    except Exception as exc:  # a malformed URI or an unreachable store: still one line
        raise ConfigError(f"{key}={uri}: cannot be checked ({str(exc).splitlines()[0][:200]}); {fix}") from None
    if not found:
        raise ConfigError(f"{key}={uri}: {what} does not exist; {fix}")


_PATH_KEYS = ("storage.root", "train.snapshot", "model.weights", "ingest.source", "ingest.dest",
              "export.timing_cache_dir")


def _resolve_paths(cfg: JobConfig) -> JobConfig:
    values = {key: absolute(_value(cfg, key)) for key in _PATH_KEYS}
    if cfg.train.snapshot == "latest":
        values["train.snapshot"] = "latest"
    values["tracking.tracking_uri"] = _sqlite_absolute(cfg.tracking.tracking_uri)
    changed = {k: v for k, v in values.items() if v != _value(cfg, k)}
    return with_values(cfg, changed) if changed else cfg


def _require_paths(cfg: JobConfig, job: str) -> None:
    if job in ("train", "tune"):
        if cfg.train.snapshot not in ("", "latest"):
            require(cfg.train.snapshot, "train.snapshot", "the snapshot",
                    "pass the snapshot URI that `cocoseg ingest` printed (…/snapshots/<id>) or train.snapshot=latest")
        require(cfg.model.weights, "model.weights", "the weights",
                "pass a cocoseg checkpoint folder or a reference .pt, or model.weights= (none)")
    if job == "ingest" and not cfg.ingest.source:  # (its listing, on the driver, says when it does not exist)
        raise ConfigError("ingest.source: is empty; set ingest.source to the dataset folder, dataset YAML or s3:// URI")


def check(job: str, cfg: JobConfig) -> None:
    """The values and cross-key rules of ``job`` (no paths): one :class:`ConfigError` line."""
    _check_values(cfg, JOB_SECTIONS[job])
    for rule in CHECKS:
        if job in rule.jobs:
            message = rule.test(cfg)
            if message:
                raise ConfigError(message)


def prepare(job: str, cfg: JobConfig) -> JobConfig:
    """``cfg`` with absolute local paths, checked for ``job`` (a key of :data:`JOB_SECTIONS`):
    one :class:`ConfigError` line for the first value, rule or path that fails."""
    check(job, cfg)
    cfg = _resolve_paths(cfg)
    _require_paths(cfg, job)
    return cfg


def ready(job: str, cfg: JobConfig, summary: Mapping[str, Any] | None = None) -> None:
    """The job is about to start Ray: log its warnings; under ``--check``, stop it here."""
    for jobs, warn in WARNINGS:
        if job in jobs:
            message = warn(cfg, job)
            if message:
                log.warning("%s", message)
    if _CHECK_ONLY:
        detail = ", ".join(f"{k}={v}" for k, v in (summary or {}).items())
        raise CheckOnly(f"config ok{f' ({detail})' if detail else ''}; nothing was started")
