"""The seed's dataset YAML (``path``, ``train``, ``val``, ``test``, ``names`` as a 0..N-1 map),
read as is: :func:`load_dataset_yaml` for a local file, :func:`dataset_spec_from_text` for text
read from anywhere (``s3://``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .load import _suggest, parse_yaml
from .sections import ConfigError

__all__ = ["DatasetSpec", "dataset_spec_from_text", "load_dataset_yaml"]



@dataclass(frozen=True)
class DatasetSpec:
    """A dataset YAML in the seed's format.

    ``path`` is the dataset root (relative paths resolve against the YAML's folder); ``train``,
    ``val`` and ``test`` are image folders relative to it; ``names`` maps 0..N-1 to class names.
    """

    path: str
    names: tuple[str, ...]
    train: str | None = None
    val: str | None = None
    test: str | None = None

    @property
    def splits(self) -> dict[str, str]:
        return {k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v}


def dataset_spec_from_text(text: str, name: str, base_dir: str = "") -> DatasetSpec:
    """Parse dataset-YAML text; ``base_dir`` resolves a relative ``path`` (may be a URI)."""
    data = parse_yaml(text, name)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: a dataset YAML must be a mapping with path/train/val/names")
    unknown = set(data) - {"path", "train", "val", "test", "names", "nc", "download"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{name}: unknown dataset key {key!r}.{_suggest(key, ['path', 'train', 'val', 'test', 'names'])}")
    names = data.get("names")
    if isinstance(names, Mapping):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: 'names' keys must be integers 0..N-1") from None
        if keys != list(range(len(keys))):
            raise ConfigError(f"{name}: 'names' keys must be exactly 0..{len(keys) - 1}, got {keys[:5]}...")
        names_t = tuple(str(names[k] if k in names else names[str(k)]) for k in keys)
    elif isinstance(names, (list, tuple)):
        names_t = tuple(str(n) for n in names)
    else:
        raise ConfigError(f"{name}: 'names' must be a 0..N-1 mapping or a list of class names")
    if "nc" in data and int(data["nc"]) != len(names_t):
        raise ConfigError(f"{name}: nc={data['nc']} but {len(names_t)} names are given")
    root = str(data.get("path") or "")
    if base_dir and not root.startswith(("/", "s3://")):
        root = f"{base_dir.rstrip('/')}/{root}".rstrip("/") if root not in ("", ".") else base_dir
    for split in ("train", "val", "test"):
        v = data.get(split)
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{name}: '{split}' must be a folder path string, got {v!r}")
    return DatasetSpec(path=root, names=names_t, train=data.get("train"), val=data.get("val"),
                       test=data.get("test"))


def load_dataset_yaml(path: str | Path) -> DatasetSpec:
    """Read a local dataset YAML (for ``s3://`` use :func:`dataset_spec_from_text`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"dataset YAML {path} does not exist") from None
    return dataset_spec_from_text(text, str(path), base_dir=str(path.parent.resolve()))
