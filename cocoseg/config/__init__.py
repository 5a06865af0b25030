"""Typed, frozen, validated configuration.

One frozen dataclass per concern, composed into :class:`JobConfig` (:mod:`.sections`). A job
config is loaded from YAML (``load_config(path, overrides)``, :mod:`.load`) where ``overrides``
are dotted ``key=value`` strings such as ``train.epochs=3`` or ``model.variant=s``. Values of
overrides are parsed as YAML scalars, so ``train.amp=false`` is a bool and
``ingest.splits=[train2017,val2017]`` a list.

Unknown keys and values of the wrong type are :class:`ConfigError` with a message that names
the key, what was expected and the closest valid key. Rank, world size and device never live
here: they come from the runtime.

The seed's dataset YAML (``path``, ``train``, ``val``, ``test``, ``names`` as a 0..N-1 map) is
read as is by :func:`load_dataset_yaml` (:mod:`.dataset`).

This package imports nothing from cocoseg (layer L0).
"""

from __future__ import annotations

from .dataset import DatasetSpec, dataset_spec_from_text, load_dataset_yaml
from .load import (
    MOVED,
    config_hash,
    config_path,
    from_dict,
    load_config,
    parse_overrides,
    parse_yaml,
    read_yaml,
    to_dict,
    with_overrides,
    with_values,
)
from .sections import (
    ConfigError,
    DataStageConfig,
    EvaluateConfig,
    ExportConfig,
    IngestConfig,
    JobConfig,
    ModelConfig,
    RegistryConfig,
    RetrainConfig,
    ScalingConfig,
    StorageConfig,
    TrackingConfig,
    TrainConfig,
    TuneConfig,
    ValidationConfig,
)

__all__ = [
    "MOVED",
    "ConfigError",
    "DataStageConfig",
    "DatasetSpec",
    "EvaluateConfig",
    "ExportConfig",
    "IngestConfig",
    "JobConfig",
    "ModelConfig",
    "RegistryConfig",
    "RetrainConfig",
    "ScalingConfig",
    "StorageConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "ValidationConfig",
    "config_hash",
    "config_path",
    "dataset_spec_from_text",
    "from_dict",
    "load_config",
    "load_dataset_yaml",
    "parse_overrides",
    "parse_yaml",
    "read_yaml",
    "to_dict",
    "with_overrides",
    "with_values",
]
