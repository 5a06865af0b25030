"""Training checkpoints: everything needed to resume, plus self-describing weights.

A checkpoint is a folder:

- ``train_state.pt``: model and EMA state dicts, optimiser, AMP scaler, epoch (the last
  *completed* epoch, 0-based), global micro-batch ``ni``, best fitness, RNG states (Python,
  NumPy, torch CPU and CUDA) and the MLflow run id. Saved with ``torch.save`` but holding only
  tensors and plain containers, so it loads with ``weights_only=True`` (no code runs on load).
- ``model.safetensors`` + ``model_card.json``: the EMA weights as a plain cocoseg model
  checkpoint (:mod:`cocoseg.model.weights`): what inference, export and ``model.weights`` read.
- ``config.json``: the resolved job config.
- ``checkpoint.json``: written last; its presence means the folder is complete.

:func:`publish` copies a folder to a local path or ``s3://`` URI through :mod:`cocoseg.storage`
(the run keeps ``weights/last`` and ``weights/best``, best by mask AP50-95).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cocoseg import storage
from cocoseg.engine.ema import ModelEMA, unwrap
from cocoseg.model import weights as model_weights
from cocoseg.utils import UserError

__all__ = [
    "CheckpointError",
    "capture_rng",
    "load_train_state",
    "publish",
    "restore_rng",
    "restore_training",
    "save_checkpoint",
]

STATE_FILE = "train_state.pt"
WEIGHTS_FILE = model_weights.WEIGHTS_FILE
CARD_FILE = model_weights.CARD_FILE
CONFIG_FILE = "config.json"
MARKER_FILE = "checkpoint.json"


class CheckpointError(UserError):
    """A checkpoint folder is missing, incomplete or from an incompatible model."""


def capture_rng() -> dict[str, Any]:
    """RNG states of Python, NumPy's legacy global generator and torch, as plain containers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states are restored only where CUDA exists)."""
    random.setstate((state["python_version"], tuple(int(x) for x in state["python"]), None))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, *, model: nn.Module, ema: ModelEMA,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                    epoch: int, ni: int, best_fitness: float, config: dict[str, Any],
                    card: model_weights.ModelCard, mlflow_run_id: str | None = None, last_step_ni: int = -1) -> Path:
    """Write a complete checkpoint into the local ``folder`` (created); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": int(epoch),
        "ni": int(ni),
        "last_step_ni": int(last_step_ni),
        "best_fitness": float(best_fitness),
        "rng": capture_rng(),
        "mlflow_run_id": mlflow_run_id or "",
    }
    torch.save(state, folder / STATE_FILE)
    model_weights.save_checkpoint(str(folder), ema.module, card)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
    (folder / MARKER_FILE).write_text(json.dumps({"epoch": int(epoch), "ni": int(ni)}) + "\n")
    return folder


def load_train_state(folder: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` of a complete checkpoint folder (tensors on CPU)."""
    folder = Path(folder)
    if not (folder / MARKER_FILE).exists():
        raise CheckpointError(f"{folder} is not a complete cocoseg checkpoint ({MARKER_FILE} is missing)")
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad files
        raise CheckpointError(f"{folder / STATE_FILE}: cannot read the training state ({exc})") from None


def restore_training(state: dict[str, Any], *, model: nn.Module, ema: ModelEMA,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                     rng: bool = True) -> None:
    """Load a :func:`load_train_state` dict into live objects (model may be DDP-wrapped)."""
    try:
        unwrap(model).load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not fit this model: {str(exc).splitlines()[0]}") from None
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if rng:
        restore_rng(state["rng"])


def publish(folder: str | Path, uri: str) -> str:
    """Copy the inference files of a checkpoint folder to ``uri`` (folder or ``s3://``).

    Only the weights, card and config travel (not the optimiser state); the marker is written
    last so a reader never takes a half-copied folder for a complete one. Returns ``uri``.
    """
    folder = Path(folder)
    for name in (WEIGHTS_FILE, CARD_FILE, CONFIG_FILE, MARKER_FILE):
        storage.write_bytes(storage.join(uri, name), (folder / name).read_bytes())
    return uri
