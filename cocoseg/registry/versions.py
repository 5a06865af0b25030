"""Register one verified export directory as one MLflow Model Registry version.

A version holds the weights (safetensors), the ONNX, the engine when built, the model card,
the metrics and the resolved config, packaged as a pyfunc model ("models from code",
``serving.py``) that serves predictions from the ONNX through the one predictor
(``cocoseg.inference.Predictor``, ONNX Runtime backend): the ``cocoseg`` package travels with the
version as pyfunc ``code_paths`` and its pip requirements name torch (CPU build). Version tags carry the
data snapshot, training run id, git commit, variant, file SHA-256s, the metrics and the TensorRT
build facts; the gate (``gate.py``) then sets ``challenger`` / ``champion``.

All or nothing: the export is verified and the server checked before any write; if anything
fails after the version was created, the version (and a registered model created for it, and the
logged model) are deleted again and the MLflow run ends FAILED.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cocoseg import bundle
from cocoseg.utils import get_logger

from .client import RegistryError, connect, mlflow_at
from .gate import (
    CHALLENGER,
    CHAMPION,
    METRIC_TAG,
    PROVENANCE_TAGS,
    SNAPSHOT_TAG,
    ChampionEvidence,
    GateDecision,
    alias_version,
    run_gate,
)

__all__ = ["Registration", "register_export", "version_tags"]

log = get_logger(__name__)

SERVING_CODE = Path(__file__).with_name("serving.py")
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the cocoseg package, shipped with every version
# The CPU build of torch: without this index pip resolves `torch==X` to the CUDA build (GBs of wheels).
TORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
# What `cocoseg.inference` (and serving.py) import on a serving host, pinned to this host's versions.
SERVING_DISTRIBUTIONS = ("mlflow", "onnxruntime", "torch", "numpy", "pillow", "pandas", "pycocotools", "pyarrow",
                         "safetensors")


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    model_uri: str
    run_id: str
    decision: GateDecision


def _find(card: dict[str, Any], *keys: str) -> Any:
    """First of ``keys`` found at the card's top level or one level down (e.g. card["data"])."""
    for key in keys:
        if card.get(key) not in (None, ""):
            return card[key]
    for value in card.values():
        if isinstance(value, dict):
            for key in keys:
                if value.get(key) not in (None, ""):
                    return value[key]
    return None


def _val_snapshot(b: bundle.ExportBundle) -> str:
    found = b.metrics.get("val_snapshot") or b.metrics.get("snapshot") or _find(b.card, "val_snapshot")
    return str(found or _find(b.card, "data_snapshot", "snapshot") or "")


def version_tags(b: bundle.ExportBundle, metric: str) -> dict[str, str]:
    """Tags of the new version, as strings (MLflow tags are text)."""
    card, export = b.card, b.card.get("export", {})
    tags = {
        "variant": _find(card, "variant"), "num_classes": export.get("num_classes"),
        "imgsz": export.get("imgsz"), "data_snapshot": _find(card, "data_snapshot", "snapshot"),
        SNAPSHOT_TAG: _val_snapshot(b), "train_run_id": _find(card, "train_run_id", "run_id", "mlflow_run_id"),
        "git_commit": _find(card, "git_commit", "code_version", "commit"),
        "export_commit": export.get("export_commit"), "onnx_sha256": b.sha256(bundle.ONNX),
        "weights_sha256": b.sha256(bundle.WEIGHTS), "onnx_opset": export.get("onnx", {}).get("opset"),
        "engine_built": str(b.has(bundle.ENGINE)).lower(), "gate.metric_name": metric,
    }
    for key, value in b.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[METRIC_TAG.format(key)] = repr(float(value))
        if key in PROVENANCE_TAGS:  # what the evaluate job measured on, compared by the gate
            tags[key] = str(int(value) if key == "eval.images" else value)
        if key in ("eval.scorer", "served.formats", "served.reason"):  # how the served artifacts were scored
            tags[key] = str(value)[:5000]
    tags["eval.matches"] = str(b.has(bundle.MATCHES)).lower()  # the gate's per-image evidence travels along
    if b.has(bundle.ONNX_INT8):
        tags["onnx_int8_sha256"] = b.sha256(bundle.ONNX_INT8)
    engine = export.get("engine", {})
    if engine.get("built"):
        tags.update({"engine_sha256": b.sha256(bundle.ENGINE), "trt.version": engine.get("tensorrt_version"),
                     "trt.cuda": engine.get("cuda_version"), "trt.gpu": engine.get("gpu_name"),
                     "trt.compute_capability": engine.get("compute_capability"),
                     "trt.precision": engine.get("precision"), "trt.profile": json.dumps(engine.get("profile"))})
    else:
        tags["trt.skipped"] = str(engine.get("reason", "not built"))[:500]
    return {k: str(v) for k, v in tags.items() if v not in (None, "")}


def _serving_info(b: bundle.ExportBundle) -> dict[str, Any]:
    export = b.card.get("export", {})
    names = _find(b.card, "class_names", "names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    return {"imgsz": export["imgsz"], "num_classes": export["num_classes"], "class_names": names,
            "onnx_sha256": b.sha256(bundle.ONNX), "io_signature": export.get("onnx", {}).get("io_signature")}


def _requirements() -> list[str]:
    """pip requirements of the served model: the predictor's imports, torch from the CPU index.

    Local version labels are dropped (``2.13.0+cpu`` -> ``torch==2.13.0``), so the pin also
    names the CPU build when the registering host runs a CUDA one."""
    pins = [TORCH_CPU_INDEX]
    for dist in SERVING_DISTRIBUTIONS:
        try:
            pins.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from cocoseg.inference import SERVE

    return ModelSignature(inputs=Schema([ColSpec("string", "image")]),
                          params=ParamSchema([ParamSpec("conf", "double", SERVE.conf), ParamSpec("iou", "double", SERVE.iou),
                                              ParamSpec("max_det", "long", SERVE.max_det),
                                              ParamSpec("masks", "boolean", True)]))


def _check_metric(b: bundle.ExportBundle, metric: str) -> float:
    value = b.metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        known = ", ".join(sorted(b.metrics)) or "none"
        raise bundle.BundleError(f"{b.path(bundle.METRICS)} has no finite number {metric!r} (keys: {known}); "
                                 "evaluate the checkpoint and export again, or set registry.gate_metric")
    return float(value)


def _log_model(mlflow: Any, b: bundle.ExportBundle, staging: Path):
    (staging / "serving.json").write_text(json.dumps(_serving_info(b), indent=2))
    artifacts = {"onnx": str(b.path(bundle.ONNX)), "serving": str(staging / "serving.json"),
                 "weights": str(b.path(bundle.WEIGHTS)), "model_card": str(b.path(bundle.CARD)),
                 "metrics": str(b.path(bundle.METRICS)), "config": str(b.path(bundle.CONFIG)),
                 "manifest": str(b.path(bundle.MANIFEST))}
    for key, name in (("engine", bundle.ENGINE), ("onnx_int8", bundle.ONNX_INT8), ("matches", bundle.MATCHES)):
        if b.has(name):
            artifacts[key] = str(b.path(name))
    return mlflow.pyfunc.log_model(name="model", python_model=str(SERVING_CODE), artifacts=artifacts,
                                   code_paths=[str(PACKAGE_DIR)], pip_requirements=_requirements(),
                                   signature=_signature())


def _ensure_registered_model(client: Any, name: str) -> bool:
    """Create ``name`` if needed; True when this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="cocoseg YOLOv8-seg exports (ONNX, TensorRT)")
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise


def _undo(client: Any, name: str, version: str | None, created: bool, model_id: str | None,
          aliases: dict[str, str] | None = None) -> None:
    """Best-effort removal of what a failed registration wrote, and the aliases put back.

    ``aliases`` (alias -> version before this registration): deleting the new version drops any
    alias the gate had already moved onto it, so the previous champion (and challenger) are
    pointed at again rather than left unset.
    """
    steps = []
    if version is not None:
        steps.append(lambda: client.delete_model_version(name, version))
    if created:
        steps.append(lambda: client.delete_registered_model(name))
    for alias, previous in (aliases or {}).items():
        steps.append(lambda a=alias, v=previous: client.set_registered_model_alias(name, a, v))
    if model_id is not None:
        steps.append(lambda: client.delete_logged_model(model_id))
    for step in steps:
        try:
            step()
        except Exception as exc:
            log.error("cleanup after a failed registration of %s failed too: %s", name, exc)


def _trained_model(client: Any, train_run_id: str) -> tuple[str, str]:
    """(training run id, its LoggedModel id) when that run is on this server and has one, else ("", "")."""
    from cocoseg.tracking.ui import MODEL_ID_TAG

    if not train_run_id:
        return "", ""
    try:
        model_id = client.get_run(train_run_id).data.tags.get(MODEL_ID_TAG, "")
    except Exception:  # another server's run, or deleted: the version keeps the register run only
        return "", ""
    return (train_run_id, model_id) if model_id else ("", "")


def _aliases(client: Any, name: str) -> dict[str, str]:
    found = {alias: alias_version(client, name, alias) for alias in (CHAMPION, CHALLENGER)}
    return {alias: str(v.version) for alias, v in found.items() if v is not None}


def _new_version(client: Any, name: str, info: Any, tags: dict[str, str], register_run_id: str) -> str:
    """Create the registry version; returns its number. Its files are the serving package just logged
    (``info``: MLflow requires ``model_id`` to be the LoggedModel holding the source); its source run
    is the training run when this server has it (the run's page lists the version, the version page
    links back), else the register run; the trained weights' LoggedModel is named in a tag."""
    train_run, trained_model = _trained_model(client, tags.get("train_run_id", ""))
    mv = client.create_model_version(name, source=info.model_uri, run_id=train_run or register_run_id,
                                     tags={**tags, **({"trained_model_id": trained_model} if trained_model else {})},
                                     model_id=info.model_id)
    return str(mv.version)


def register_export(export_dir: str | Path, *, name: str, tracking_uri: str, experiment: str = "cocoseg",
                    metric: str = "val/mask_ap50_95", margin: float = 0.0, same_snapshot: bool = True,
                    policy: Any = None, champion_evidence: ChampionEvidence | None = None) -> Registration:
    """Register ``export_dir`` as a new version of ``name`` and run the gate on it. ``policy`` (default
    from ``margin``) turns the evidence gate on when the export carries per-image matches (``matches.npz``);
    ``champion_evidence``: the champion's matches on the same images (``register`` re-evaluates one)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from cocoseg.metrics.bootstrap import load_matches

    from .evidence import GatePolicy

    b = bundle.open_bundle(export_dir)
    _check_metric(b, metric)
    matches = load_matches(b.path(bundle.MATCHES)) if b.has(bundle.MATCHES) else None
    policy = policy or GatePolicy(margin=margin)
    client, tags = connect(tracking_uri), version_tags(b, metric)
    version = model_id = None
    created, aliases = False, {}
    try:
        # MLflow writes "View run ... at: URL" to stdout; keep stdout for the command's result.
        with mlflow_at(tracking_uri, experiment=experiment), contextlib.redirect_stdout(sys.stderr), \
                tempfile.TemporaryDirectory(prefix="cocoseg-register-") as tmp, \
                mlflow.start_run(run_name=f"register-{name}", tags={"cocoseg.job": "register"}) as run:
            info = _log_model(mlflow, b, Path(tmp))
            model_id = info.model_id
            mlflow.log_metrics({k.replace("@", "_"): float(v) for k, v in b.metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            created = _ensure_registered_model(client, name)
            aliases = {} if created else _aliases(client, name)
            version = _new_version(client, name, info, tags, run.info.run_id)
            decision = run_gate(client, name, version, metric=metric, margin=margin, same_snapshot=same_snapshot,
                                policy=policy, matches=matches, champion_evidence=champion_evidence)
            mlflow.set_tags({k: v for k, v in decision.tags().items() if v})  # the gate's numbers on the register run too
    except (MlflowException, RegistryError, OSError) as exc:
        _undo(client, name, version, created, model_id, aliases)
        if isinstance(exc, RegistryError):
            raise
        raise RegistryError(f"registering {b.root} as {name!r} failed, nothing was kept: "
                            f"{getattr(exc, 'message', None) or exc}") from None
    except BaseException:
        _undo(client, name, version, created, model_id, aliases)
        raise
    log.info("registered %s v%s (%s): %s", name, version, info.model_uri, decision.reason)
    return Registration(name=name, version=version, model_uri=f"models:/{name}/{version}",
                        run_id=run.info.run_id, decision=decision)
