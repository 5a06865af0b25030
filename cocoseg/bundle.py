"""The export directory: the hand-over between ``cocoseg export`` and ``cocoseg register``.

Layout (flat, local folder)::

    model.safetensors   weights (safetensors: tensors only, nothing executable)
    model_card.json     the checkpoint's model card plus an ``export`` section (ONNX facts, parity
                        errors, TensorRT build facts or why no engine, latency table)
    model.onnx          the ONNX graph, weights embedded (cocoseg.export.onnx.IO_SIGNATURE)
    model.engine        optional: serialized TensorRT plan for the GPU named in the card
    model.int8.onnx     optional: the ONNX statically quantized to INT8 (QDQ; export.formats onnx-int8)
    matches.npz         optional: the served ONNX's per-image COCO matches on the evaluated split
                        (cocoseg.metrics.bootstrap; written by `cocoseg register`, the gate's evidence)
    metrics.json        evaluation metrics (flat name -> number; may be {} before evaluation)
    config.yaml         the resolved job config
    export.json         the manifest, written last: every file with its size and SHA-256

The manifest commits the directory: without it the folder is an unfinished export. Readers
verify every listed file's size and SHA-256, so a truncated, swapped or tampered file is refused
before anything is registered. Export (L3) writes and registry (L3) reads this format, and
siblings may not import each other, so it lives below both (layer L1; imports only ``utils``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cocoseg.utils import UserError

__all__ = [
    "CARD", "CONFIG", "ENGINE", "MANIFEST", "MATCHES", "METRICS", "ONNX", "ONNX_INT8", "REQUIRED", "WEIGHTS",
    "BundleError", "ExportBundle", "open_bundle", "sha256_file", "write_manifest",
]

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
ONNX = "model.onnx"
ENGINE = "model.engine"
ONNX_INT8 = "model.int8.onnx"
MATCHES = "matches.npz"
METRICS = "metrics.json"
CONFIG = "config.yaml"
MANIFEST = "export.json"
REQUIRED = (WEIGHTS, CARD, ONNX, METRICS, CONFIG)
FORMAT_VERSION = 1


class BundleError(UserError):
    """An export directory is missing, incomplete or altered."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(root: str | Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file in ``root`` and write ``export.json`` atomically (last)."""
    root = Path(root)
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise BundleError(f"{root}: cannot commit the export, {', '.join(missing)} not written")
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    manifest = {"format_version": FORMAT_VERSION, "files": files, **(info or {})}
    tmp = root / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, root / MANIFEST)
    return manifest


@dataclass(frozen=True)
class ExportBundle:
    """A verified export directory."""

    root: Path
    manifest: dict[str, Any]
    card: dict[str, Any]
    metrics: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def sha256(self, name: str) -> str:
        return self.manifest["files"][name]["sha256"]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: {what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def open_bundle(root: str | Path) -> ExportBundle:
    """Open and verify an export directory; every problem is a :class:`BundleError` naming the file."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"export directory {root} does not exist")
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root} is not a finished export: {MANIFEST} is missing (run `cocoseg export` "
                          "again; the manifest is written last)")
    manifest = _read_json(root / MANIFEST, "the export manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise BundleError(f"{root / MANIFEST}: has no 'files' table")
    for name in REQUIRED:
        if name not in files:
            raise BundleError(f"{root / MANIFEST}: the export lists no {name}")
    for name, entry in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{path} is missing from the export (listed in {MANIFEST})")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise BundleError(f"{path} does not match its SHA-256 in {MANIFEST}: the file was changed "
                              "after export; re-export instead of editing it")
    card = _read_json(root / CARD, "the model card")
    metrics = _read_json(root / METRICS, "the metrics file")
    if not isinstance(card, dict) or not isinstance(metrics, dict):
        raise BundleError(f"{root}: {CARD} and {METRICS} must each hold a JSON object")
    return ExportBundle(root=root, manifest=manifest, card=card, metrics=_dotted(metrics))


def _dotted(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"segm": {"map50_95": 0.3}}`` -> ``{"segm.map50_95": 0.3}``; non-numbers kept as they are
    (a metrics.json's own key paths; the MLflow metric names are :func:`cocoseg.metrics.flatten_metrics`'s)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{name}."))
        else:
            flat[name] = value
    return flat
