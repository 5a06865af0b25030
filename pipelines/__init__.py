"""The jobs: ``python -m pipelines.<job> --config pipelines/configs/<x>.yaml [key=value ...]``."""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def config_path(path: str | None) -> str | None:
    """``--config`` as given, or, when a relative path does not exist from the working directory
    (a Ray job driver's working directory is not the project's), the same path under the folder
    that holds this package (``pipelines/configs/*.yaml`` ship with it)."""
    if not path or os.path.isabs(path) or "://" in path or os.path.exists(path):
        return path
    beside = _ROOT / path
    return str(beside) if beside.exists() else path
