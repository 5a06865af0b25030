"""The search space of ``pipelines.tune``: YAML in, Ray Tune domains out, checked before any trial.

``tune.space`` maps dotted config keys to one distribution each::

    tune:
      space:
        train.lr0: {loguniform: [0.0001, 0.01]}
        train.weight_decay: {uniform: [0.0, 0.001]}
        train.optimizer: {choice: [SGD, AdamW]}
        train.close_mosaic: {randint: [0, 3]}      # high exclusive, as in Ray Tune

Nested keys (``space: {train: {lr0: {...}}}``, what ``tune.space.train.lr0=...`` on the command
line builds) mean the same. Every key must be a config key (the same "did you mean" message as
any config error); every value a distribution can draw must be valid for that key (the bounds and
each choice are applied to the config as overrides, so a float for an integer field, a choice
outside a field's choices, or a bound outside its range fails here, not in trial 7). Keys that set
the search itself (``tune.*``) or the shape and place of every trial (storage, tracking, workers
and their CPUs) are refused: every trial must fit the same placement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from cocoseg.config import ConfigError, JobConfig, to_dict, with_values
from cocoseg.config_checks import check

__all__ = ["DISTRIBUTIONS", "TRIAL_DRIVER_CPUS", "check_concurrency", "flatten_space", "per_trial_cpus", "tune_domains",
           "validate_space"]

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
_EXAMPLE = {"choice": "{choice: [SGD, AdamW]}", "uniform": "{uniform: [0.0, 0.001]}",
            "loguniform": "{loguniform: [0.0001, 0.01]}", "randint": "{randint: [0, 4]}"}
# Fixed for all trials: what the search itself is, where runs go, and the resources each trial
# takes (the concurrency check and Tune's placement assume one shape for every trial).
_FIXED_PREFIXES = ("tune.", "storage.", "tracking.", "scaling.")  # where runs go, the resources every trial takes
# train.optimizer=auto picks its own lr / momentum / warmup bias lr (cocoseg.engine.optim): a search
# over these would train identical trials.
_AUTO_IGNORES = ("train.lr0", "train.momentum", "train.warmup_bias_lr")
_FIXED_KEYS = ("train.snapshot", "train.epochs", "data.actors", "data.cpus_per_actor")


def _is_distribution(node: Any) -> bool:
    return isinstance(node, Mapping) and len(node) == 1 and next(iter(node)) in DISTRIBUTIONS


def flatten_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """``{"train": {"lr0": {"uniform": [a, b]}}}`` and ``{"train.lr0": {...}}`` -> the latter."""
    flat: dict[str, dict[str, Any]] = {}
    for key, node in space.items():
        dotted = f"{prefix}{key}"
        if _is_distribution(node):
            flat[dotted] = dict(node)
        elif isinstance(node, Mapping) and node and all(isinstance(v, Mapping) for v in node.values()):
            flat.update(flatten_space(node, f"{dotted}."))
        else:  # a leaf that is not one known distribution
            kinds = [k for k in node if k not in DISTRIBUTIONS] if isinstance(node, Mapping) else []
            what = f"{kinds[0]!r} is not a distribution" if len(kinds) == 1 and len(node) == 1 else \
                f"{json.dumps(node, default=str)} is not one distribution"
            raise ConfigError(f"tune.space.{dotted}: {what}; write one of {', '.join(_EXAMPLE.values())}")
    return flat


def _bounds(key: str, kind: str, args: Any) -> list[Any]:
    """The values to try against the schema; raises one line for a malformed distribution."""
    where = f"tune.space.{key}: {{{kind}: {json.dumps(args, default=str)}}}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where} needs a non-empty list of values, e.g. {_EXAMPLE['choice']}")
        return list(args)
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)):
        raise ConfigError(f"{where} needs [low, high] numbers, e.g. {_EXAMPLE[kind]}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where} needs low < high")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where} needs 0 < low (a log scale), e.g. {_EXAMPLE['loguniform']}")
    if kind == "randint":
        if not all(isinstance(v, int) for v in args):
            raise ConfigError(f"{where} needs integer bounds, e.g. {_EXAMPLE['randint']}")
        return [low, high - 1]  # high is exclusive
    return [float(low), float(high)]  # what uniform / loguniform draw: floats, also for int bounds


def _check_key(cfg: JobConfig, key: str) -> None:
    """An unknown key fails with the config's own message ("unknown config key ... Did you mean"),
    behind the name of where it was written (``tune.space.<key>``)."""
    node: Any = to_dict(cfg)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            try:
                with_values(cfg, {key: 0})  # raises the unknown-key error (keys are checked before values)
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{key}: {exc}") from None
            raise ConfigError(f"tune.space.{key}: not a config key")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"tune.space.{key}: is a config section; name one of its keys, e.g. {key}.{next(iter(node))}")


def validate_space(cfg: JobConfig) -> dict[str, dict[str, Any]]:
    """The flattened, checked ``tune.space`` of ``cfg``; :class:`ConfigError` with one line otherwise."""
    flat = flatten_space(cfg.tune.space)
    if not flat:
        raise ConfigError("tune.space is empty; give at least one key to search, e.g. "
                          "tune.space={train.lr0: {loguniform: [0.0001, 0.01]}}")
    for key, dist in flat.items():
        (kind, args), = dist.items()
        values = _bounds(key, kind, args)
        _check_key(cfg, key)
        if key.startswith(_FIXED_PREFIXES) or key in _FIXED_KEYS:
            raise ConfigError(f"tune.space.{key}: cannot be searched (it sets the search, where runs go or the "
                              f"resources every trial takes); set it once for all trials, e.g. {key}=...")
        if key in _AUTO_IGNORES and cfg.train.optimizer == "auto" and "train.optimizer" not in flat:
            raise ConfigError(f"tune.space.{key}: train.optimizer=auto ignores {key} (it picks its own); set "
                              "train.optimizer=SGD or AdamW, or search train.optimizer too")
        for value in values:
            try:
                check("train", with_values(cfg, {key: value}))  # what each trial's train job checks first
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{key}: {{{kind}: {json.dumps(args)}}} can draw {value!r}, which "
                                  f"the config refuses ({exc})") from None
    return flat


def tune_domains(flat: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Ray Tune sample domains for a validated flat space."""
    from ray import tune

    domains = {}
    for key, dist in flat.items():
        (kind, args), = dist.items()
        domains[key] = tune.choice(list(args)) if kind == "choice" else getattr(tune, kind)(*args)
    return domains


# The trial's own driver function only waits on its trainer: a token share of a CPU (Tune refuses
# a trial with no resources at all) rather than a whole CPU taken from the workers.
TRIAL_DRIVER_CPUS = 0.1


def per_trial_cpus(cfg: JobConfig) -> float:
    """CPUs one trial holds: its train workers, its input actors and its driver's token share."""
    s = cfg.scaling
    return s.num_workers * s.cpus_per_worker + cfg.data.actors * cfg.data.cpus_per_actor + TRIAL_DRIVER_CPUS


def check_concurrency(cfg: JobConfig, nodes: list[Mapping[str, float]]) -> None:
    """Refuse ``tune.max_concurrent_trials`` trials the cluster cannot place side by side.

    ``nodes``: the live nodes' resources (``ray.nodes()[i]["Resources"]``). One CPU more is kept
    for Ray's own read tasks, as cocoseg.engine.checks does for a single run.
    """
    s, n = cfg.scaling, cfg.tune.max_concurrent_trials
    per_trial = per_trial_cpus(cfg)
    total_cpu = sum(node.get("CPU", 0.0) for node in nodes)
    fits = max(0, math.floor((total_cpu - 1) / per_trial + 1e-9)) if per_trial else n
    gpus = sum(node.get("GPU", 0.0) for node in nodes)
    if s.use_gpu:
        fits = min(fits, math.floor(gpus / s.num_workers))
    if fits >= n:
        return
    gpu_part = f" and {n * s.num_workers} GPUs (the cluster has {gpus:g})" if s.use_gpu else ""
    raise ConfigError(
        f"tune.max_concurrent_trials={n} needs {n} x ({s.num_workers} worker(s) x {s.cpus_per_worker:g} CPU + "
        f"{cfg.data.actors} input actor(s) x {cfg.data.cpus_per_actor:g} CPU + {TRIAL_DRIVER_CPUS:g} trial driver) + 1 = {n * per_trial + 1:g} CPUs{gpu_part}, "
        f"the cluster has {total_cpu:g} CPUs; set tune.max_concurrent_trials={max(fits, 1)}"
        f"{'' if fits else ' and lower scaling.cpus_per_worker / data.actors'}, or add nodes")
