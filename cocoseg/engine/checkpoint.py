"""Training checkpoints: everything needed to resume, plus self-describing weights.

A checkpoint is a folder:

- ``train_state.pt``: model and EMA state dicts, optimiser, AMP scaler, epoch (the last
  *completed* epoch, 0-based), the global micro-batch ``micro_step`` (stored as ``ni``, the
  reference's name, so older checkpoints still load), best fitness, RNG states (Python,
  NumPy, torch CPU and CUDA) and the MLflow run id. Saved with ``torch.save`` but holding only
  tensors and plain containers, so it loads with ``weights_only=True`` (no code runs on load).
- ``model.safetensors`` + ``model_card.json``: the EMA weights as a plain cocoseg model
  checkpoint (:mod:`cocoseg.model.weights`): what inference, export and ``model.weights`` read.
- ``config.json``: the resolved job config.
- ``checkpoint.json``: the commit marker, written last: epoch, step and each other file's size
  and SHA-256 (:func:`cocoseg.storage.write_manifest`). A folder without it, or whose files differ
  from it, is a write cut short: every reader here refuses it (:func:`check_complete`).

Copies commit the same way, on local folders and S3 alike: :func:`upload` (Ray Train's
checkpoint upload, see ``worker.py``) and :func:`publish` (``weights/last`` and ``weights/best``)
first remove the destination's marker, then write the files, then the marker. :func:`publish`
also removes the model card before the weights change, so a reader that knows nothing of the
marker (it needs the card) never pairs a new weights file with an old card.
:func:`latest_complete` and :func:`sweep_incomplete` let a resume pick the newest *complete*
checkpoint of a run and remove what interrupted writes left behind.
"""

from __future__ import annotations

import copy
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

__all__ = [
    "CHECKPOINT_PREFIX",
    "CheckpointError",
    "capture_rng",
    "check_complete",
    "checkpoint_dirs",
    "latest_complete",
    "load_train_state",
    "publish",
    "restore_rng",
    "restore_training",
    "save_checkpoint",
    "snapshot_training",
    "sweep_incomplete",
    "upload",
    "write_snapshot",
]

STATE_FILE = "train_state.pt"
WEIGHTS_FILE = model_weights.WEIGHTS_FILE
CARD_FILE = model_weights.CARD_FILE
CONFIG_FILE = "config.json"
MARKER_FILE = model_weights.MARKER_FILE
CheckpointError = model_weights.CheckpointError  # one error for every unreadable or unfitting checkpoint
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's folders under the run folder
PUBLISHED = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)  # what publish copies, card last (see the module doc)


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


def save_checkpoint(folder: str | Path, **kwargs: Any) -> Path:
    """Write a complete checkpoint into the local ``folder`` (created); returns it. Keywords: those
    of :func:`snapshot_training`."""
    return write_snapshot(folder, snapshot_training(**kwargs))


def _cpu_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to CPU memory (containers rebuilt): training may go on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def snapshot_training(*, model: nn.Module, ema: ModelEMA, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None, epoch: int, micro_step: int, best_fitness: float,
                      config: dict[str, Any], card: model_weights.ModelCard, mlflow_run_id: str | None = None,
                      last_step_at: int = -1, is_best: bool = False,
                      mid_epoch: dict[str, Any] | None = None, time_spent_s: float = 0.0) -> dict[str, Any]:
    """Everything a checkpoint holds, copied into CPU memory now (a few tens of MB, milliseconds),
    so :func:`write_snapshot` can serialise it later in another thread (Ray's upload thread) while
    training changes the live objects. ``is_best`` (the epoch set a new best fitness) goes into
    the marker, so a resume can repair weights/best. ``mid_epoch``: a just-in-time checkpoint
    inside epoch ``epoch + 1`` (``engine/spot.py``: the plan position and every rank's RNG states);
    its marker says so. ``time_spent_s``: wall seconds of ``train.time_budget_h`` spent (engine/budget.py)."""
    state = _cpu_copy({
        "model": unwrap(model).state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
    })
    state.update({"epoch": int(epoch), "ni": int(micro_step), "last_step_ni": int(last_step_at),
                  "best_fitness": float(best_fitness), "rng": _cpu_copy(capture_rng()),
                  "mlflow_run_id": mlflow_run_id or "", "time_spent_s": float(time_spent_s)})
    if mid_epoch:
        state["mid_epoch"] = _cpu_copy(mid_epoch)
    weights = copy.deepcopy(ema.module).to("cpu")
    return {"state": state, "weights": weights, "card": card, "config": config, "is_best": bool(is_best)}


def write_snapshot(folder: str | Path, snapshot: dict[str, Any]) -> Path:
    """Serialise a :func:`snapshot_training` into the local ``folder`` (created), marker last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = snapshot["state"]
    torch.save(state, folder / STATE_FILE)
    model_weights.save_checkpoint(str(folder), snapshot["weights"], snapshot["card"])
    (folder / CONFIG_FILE).write_text(json.dumps(snapshot["config"], indent=2, default=str) + "\n")
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER_FILE}
    manifest = {"epoch": state["epoch"], "ni": state["ni"], "is_best": snapshot["is_best"],
                "mid_epoch": bool(state.get("mid_epoch")),
                "files": {n: {"size": len(d), "sha256": storage.sha256(d)} for n, d in files.items()}}
    storage.write_json(str(folder / MARKER_FILE), manifest)
    return folder


def check_complete(uri: str | Path, *, hashes: bool = False) -> dict[str, Any]:
    """The marker of a complete checkpoint folder (local or ``s3://``); :class:`CheckpointError`
    naming the folder when the marker is missing or a file is missing or truncated (or, with
    ``hashes``, differs)."""
    try:
        return storage.check_manifest(str(uri), MARKER_FILE, hashes=hashes)
    except storage.IncompleteError as exc:
        raise CheckpointError(f"not a complete cocoseg checkpoint: {exc}") from None


def load_train_state(folder: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` of a complete checkpoint folder (tensors on CPU)."""
    folder = Path(folder)
    if not (folder / MARKER_FILE).exists():
        raise CheckpointError(f"{folder} is not a complete cocoseg checkpoint ({MARKER_FILE} is missing)")
    check_complete(folder)
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


def publish(folder: str | Path, uri: str, *, card_metrics: dict[str, float] | None = None) -> str:
    """Copy the inference files of a checkpoint folder (local or ``s3://``) to ``uri``.

    Only the weights, card and config travel (not the optimiser state). Order: the marker and
    the card go first, then weights, config, card, and a marker listing those three last, so a
    kill at any moment leaves either a folder every reader refuses or a whole one. Returns ``uri``.
    ``card_metrics`` are merged into the card's metrics (an epoch validated after its checkpoint
    was written: ``engine/validation.py``).
    """
    src = str(folder)
    epoch = check_complete(src).get("epoch")
    storage.delete(storage.join(uri, MARKER_FILE))
    storage.delete(storage.join(uri, CARD_FILE))
    files = {name: storage.read_bytes(storage.join(src, name)) for name in PUBLISHED}
    if card_metrics:
        card = json.loads(files[CARD_FILE])
        card["metrics"] = {**card.get("metrics", {}), **{k: float(v) for k, v in card_metrics.items()}}
        files[CARD_FILE] = (json.dumps(card, indent=2) + "\n").encode()
    storage.write_manifest(uri, MARKER_FILE, files, extra={"epoch": epoch})
    return uri


def upload(folder: str | Path, uri: str) -> str:
    """Copy a complete local checkpoint folder to ``uri``, committing with its marker last."""
    folder = Path(folder)
    check_complete(folder)
    storage.delete(storage.join(uri, MARKER_FILE))
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MARKER_FILE:
            storage.write_bytes(storage.join(uri, path.name), path.read_bytes())
    storage.write_bytes(storage.join(uri, MARKER_FILE), (folder / MARKER_FILE).read_bytes())
    return uri


def checkpoint_dirs(run_dir: str) -> list[str]:
    """URIs of the ``checkpoint_*`` folders directly under a run folder (complete or not)."""
    names = set()
    for entry in storage.list_files(run_dir):
        rel = entry.uri[len(str(run_dir)):].lstrip("/").split("/")
        if len(rel) == 2 and rel[0].startswith(CHECKPOINT_PREFIX):
            names.add(rel[0])
    if not storage.is_s3(run_dir) and Path(run_dir).is_dir():  # an empty local folder has no files to list
        names |= {p.name for p in Path(run_dir).iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)}
    return [storage.join(run_dir, n) for n in sorted(names)]


def latest_complete(run_dir: str) -> tuple[str, int] | None:
    """(URI, epoch) of the run's newest complete checkpoint: the highest (epoch, ``micro_step``), so a
    mid-epoch one (its epoch is the last *completed* one) comes after that epoch's end; or None."""
    best: tuple[str, int, int] | None = None
    for uri in checkpoint_dirs(run_dir):
        try:
            marker = check_complete(uri)
            epoch, micro_step = int(marker["epoch"]), int(marker.get("ni", -1))
        except (CheckpointError, KeyError, ValueError, TypeError):
            continue
        if best is None or (epoch, micro_step) > (best[1], best[2]):
            best = (uri, epoch, micro_step)
    return None if best is None else (best[0], best[1])


def sweep_incomplete(run_dir: str) -> list[str]:
    """Remove the run's incomplete checkpoint folders (orphans of interrupted writes); returns them.

    Call it only while nothing writes checkpoints (a worker group starting, or after the run).
    """
    removed = []
    for uri in checkpoint_dirs(run_dir):
        try:
            check_complete(uri)
        except CheckpointError:
            storage.delete(uri, recursive=True)
            removed.append(uri)
    return removed
