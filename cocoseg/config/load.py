"""Loading a job config: YAML file, then dotted ``key=value`` overrides, then validation.

``load_config(path, overrides)`` merges the file and the overrides (later wins) and builds
:class:`~cocoseg.config.sections.JobConfig` through :func:`from_dict`, which rejects unknown keys
(naming the closest valid one, or where a key of an earlier release went: :data:`MOVED`) and
values of the wrong type. Override values are parsed as YAML scalars, so ``train.amp=false`` is a
bool and ``ingest.splits=[train2017,val2017]`` a list; code that holds a Python value uses
:func:`with_values` (nothing parsed again).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .sections import ConfigError, JobConfig

__all__ = [
    "MOVED",
    "config_hash",
    "config_path",
    "from_dict",
    "load_config",
    "parse_overrides",
    "parse_yaml",
    "read_yaml",
    "to_dict",
    "with_overrides",
    "with_values",
]


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(sorted(candidates))}."


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check (and gently convert) one value against a field annotation."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


# Keys that existed in an earlier release: a config that still sets one gets what to write instead.
MOVED: dict[str, str] = {
    "ingest.batch_rows": "was removed (ingest shards are Ray tasks; nothing batches rows): delete the key",
    **{f"train.{k}": f"moved to scaling.{k}" for k in ("num_workers", "use_gpu", "cpus_per_worker", "threads_per_worker",
                                                         "placement_strategy", "max_failures", "min_workers")},
    **{f"train.{k}": f"moved to data.{k}" for k in ("max_train_images", "max_val_images")},
    **{f"train.data_{k}": f"moved to data.{k}" for k in ("actors", "cpus_per_actor", "batch_rows")},
}


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a mapping, rejecting unknown keys (a key of an
    earlier release is named with where it went, see :data:`MOVED`)."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if f"{prefix}{key}" in MOVED:
            raise ConfigError(f"config key '{prefix}{key}' {MOVED[f'{prefix}{key}']}")
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'.{_suggest(str(key), names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-serialisable dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(config)


def config_hash(config: Any) -> str:
    """Stable short hash of a resolved config (for model cards and run tags)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.variant=s"]`` -> nested dict, values parsed as YAML scalars
    (what a person types on a command line; code that holds a value uses :func:`with_values`)."""
    pairs: list[tuple[str, Any]] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=3)")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((dotted, value))
    return _nest(pairs)


def _nest(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """``[("a.b", 1), ("a.c", "x")]`` -> ``{"a": {"b": 1, "c": "x"}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in pairs:
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {dotted!r}={value!r} has an empty key")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return nested


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def with_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """A copy of ``config`` with dotted overrides applied and validated like the command line's."""
    merged = _deep_merge(to_dict(config), parse_overrides(overrides))
    return from_dict(type(config), merged)


def with_values(config: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with dotted keys set to Python values, validated like the command
    line's: ``with_values(cfg, {"train.snapshot": uri})``. Nothing is parsed again as YAML, so a
    value holding ``" #"``, ``": "`` or a leading ``*`` stays whole."""
    merged = _deep_merge(to_dict(config), _nest(list(values.items())))
    return from_dict(type(config), merged)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax error names the file and the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, name: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{name}: malformed YAML{where}: {problem}") from None


_PROJECT = Path(__file__).resolve().parents[2]  # holds cocoseg/ and pipelines/ (a checkout or site-packages)


def config_path(path: str | None) -> str | None:
    """``--config`` as given, or, when a relative path does not exist from the working directory
    (a Ray job driver's working directory is not the project's), the same path under the folder
    that holds the packages (``pipelines/configs/*.yaml`` ship with them)."""
    if not path or os.path.isabs(path) or "://" in path or os.path.exists(path):
        return path
    beside = _PROJECT / path
    return str(beside) if beside.exists() else path


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                cls: type = JobConfig) -> Any:
    """Load ``cls`` from an optional YAML file plus dotted overrides (later wins)."""
    data: dict[str, Any] = {}
    if path:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        data = dict(loaded)
    data = _deep_merge(data, parse_overrides(overrides))
    where = f" (in {path})" if path else ""
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{where}") from None
