"""A training run's MLflow life, journaled so that no outage loses any of it.

``<run dir>/tracking/run.json`` (the *run record*) holds everything needed to create and to finish
the MLflow run: tracking URI (no credentials), experiment, name, params, tags, parent, dataset
inputs, the MLflow run id once it exists, and the final status once training ended. The driver
writes it before talking to MLflow, and :func:`complete_run` is the one path that brings MLflow
up to date from it: create the run if it does not exist yet (an offline start), replay the metric
journal, and, once training ended, log the end-of-run artifacts (config, curves, preview, weights,
per-class AP), the LoggedModel with its metrics, and the final status. The driver calls it at the
end of training; ``cocoseg sync-mlflow RUN_DIR`` calls it again for whatever an outage left over.
Every step is idempotent: a rerun after a partial success sends nothing twice.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cocoseg import storage
from cocoseg.utils import get_logger, redact

from . import journal as jr
from . import server as srv
from . import ui

__all__ = ["RUN_RECORD", "Completion", "complete_run", "end_run", "log_run_artifacts", "open_run",
           "read_run_record", "run_record_uri"]

log = get_logger(__name__)

RUN_RECORD = "run.json"


def run_record_uri(run_dir: str) -> str:
    return storage.join(run_dir, "tracking", RUN_RECORD)


def read_run_record(run_dir: str) -> dict[str, Any]:
    uri = run_record_uri(run_dir)
    return storage.read_json(uri) if storage.exists(uri) else {}


def _write_record(run_dir: str, record: Mapping[str, Any]) -> None:
    storage.write_json(run_record_uri(run_dir), redact(dict(record)))


def open_run(run_dir: str, *, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any],
             tags: Mapping[str, str], parent_run_id: str = "", artifact_location: str = "",
             inputs: Sequence[Mapping[str, Any]] = (), offline_ok: bool = False) -> str:
    """The MLflow run id of this run folder: the recorded one (a resume), else a new run (with
    its dataset inputs and its PENDING LoggedModel, whose id the run record then holds).

    The run record is written first. When the server does not answer: with ``offline_ok``
    returns "" (training goes on, :func:`complete_run` creates the run later), else raises
    :class:`~cocoseg.tracking.server.TrackingUnavailable` (one line, the URI and the fix).
    """
    record = read_run_record(run_dir)
    if not record.get("run_id"):  # new, or never created in MLflow: this call's description wins
        legacy = jr.read_journal(jr.journal_uri(run_dir))  # a run folder from before the record existed
        record = {"tracking_uri": tracking_uri, "experiment": experiment, "run_name": run_name,
                  "params": jr.flatten_params(params), "tags": dict(tags), "parent_run_id": parent_run_id,
                  "artifact_location": artifact_location, "inputs": list(inputs),
                  "run_id": next((r["run_id"] for r in reversed(legacy) if r["run_id"]), ""),
                  "status": "", "completed": False, "model_id": record.get("model_id", "")}
        _write_record(run_dir, record)
    if record["run_id"]:
        return record["run_id"]
    srv.fast_fail()
    try:
        srv.preflight(tracking_uri)
        return _create(run_dir, record)
    except Exception as exc:
        if not offline_ok:
            if isinstance(exc, srv.TrackingUnavailable):
                raise
            raise srv.TrackingUnavailable(f"MLflow at {redact(tracking_uri)} could not create the run "
                                         f"({type(exc).__name__}: {redact(str(exc))[:300]}); {srv.OFFLINE_HINT}") from None
        log.warning("MLflow at %s is not reachable; training on the journal (tracking.offline_ok=true), "
                    "then: cocoseg sync-mlflow %s", redact(tracking_uri), run_dir)
        return ""


def _create(run_dir: str, record: dict[str, Any]) -> str:
    client = jr._client(record["tracking_uri"])
    run_id = jr.create_run(tracking_uri=record["tracking_uri"], experiment=record["experiment"],
                           run_name=record["run_name"], params={}, tags=record["tags"],
                           parent_run_id=record["parent_run_id"], artifact_location=record["artifact_location"])
    jr.log_params(client, run_id, record["params"])
    ui.log_dataset_inputs(client, run_id, record["inputs"])
    record["run_id"] = run_id
    _write_record(run_dir, record)
    record["model_id"] = ui.create_trained_model(client, run_id, record)
    _write_record(run_dir, record)
    return run_id


def end_run(run_dir: str, status: str) -> Completion | None:
    """Journal the final ``status`` (FINISHED / FAILED), then try :func:`complete_run`.

    Returns the completion, or None when MLflow did not take it (one warning line saying how to
    finish later); never raises for an MLflow problem, so a training result is never lost to one.
    """
    record = read_run_record(run_dir)
    if not record:
        return None
    record["status"] = status
    _write_record(run_dir, record)
    try:
        return complete_run(run_dir)
    except Exception as exc:
        reason = "not reachable" if isinstance(exc, srv.TrackingUnavailable) else \
            redact((str(exc).splitlines() or [type(exc).__name__])[0])[:200]
        log.warning("MLflow at %s did not take the end of the run (%s); everything is journaled in %s; "
                    "when the server answers run: cocoseg sync-mlflow %s", redact(record["tracking_uri"]),
                    reason, storage.join(run_dir, "tracking"), run_dir)
        return None


@dataclass(frozen=True)
class Completion:
    run_id: str
    sent: int  # epochs sent now
    present: int  # epochs MLflow already held
    finished: bool  # the final status and the end-of-run artifacts are in MLflow
    artifacts: tuple[str, ...] = ()


def complete_run(run_dir: str, tracking_uri: str = "") -> Completion:
    """Bring MLflow up to date with the run folder (see the module docstring); idempotent.

    ``tracking_uri`` overrides the recorded URI (the server moved). Raises when MLflow fails.
    """
    record = read_run_record(run_dir)
    journal = jr.journal_uri(run_dir)
    if not record:  # a journal-only run folder (older layout): metrics are all there is
        sent, present = jr.sync_journal(journal, tracking_uri)
        run_id = next((r["run_id"] for r in jr.read_journal(journal) if r["run_id"]), "")
        return Completion(run_id, sent, present, False)
    if tracking_uri:
        record["tracking_uri"] = tracking_uri
    uri = record["tracking_uri"]
    srv.fast_fail()
    srv.preflight(uri, hint=f"then run cocoseg sync-mlflow {run_dir} again")
    run_id = record["run_id"] or _create(run_dir, record)
    client = jr._client(uri)
    if not record.get("model_id"):  # the run was created before the LoggedModel (a crash between)
        record["model_id"] = ui.create_trained_model(client, run_id, record)
        _write_record(run_dir, record)
    sent, present = jr.sync_journal(journal, uri, run_id=run_id, model_id=record["model_id"])
    if not record.get("status") or record.get("completed"):
        return Completion(run_id, sent, present, bool(record.get("completed")))
    logged = log_run_artifacts(uri, run_id, run_dir)
    steps = [r["step"] for r in jr.read_journal(journal)]
    ui.finish_trained_model(client, run_id, run_dir, record["model_id"], max(steps, default=0))
    client.set_terminated(run_id, status=record["status"])
    record["completed"] = True
    _write_record(run_dir, record)
    return Completion(run_id, sent, present, True, tuple(logged))


def plot_curves(records, out_dir: str | Path) -> list[Path]:
    """Training curves from journal records: ``losses.png``, ``metrics.png`` (AP), ``lr.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted(records, key=lambda r: r["step"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = {"losses.png": lambda k: k.startswith(("train/loss", "val/loss")),
              "metrics.png": lambda k: k.startswith("val/") and "ap" in k and k.count("/") == 1,
              "lr.png": lambda k: k.startswith("lr/")}
    written = []
    for name, wanted in panels.items():
        keys = sorted({k for r in records for k in r["metrics"] if wanted(k)})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            pts = [(r["step"], r["metrics"][key]) for r in records if key in r["metrics"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        written.append(out_dir / name)
    return written


# Run-folder files that become run artifacts (weights/ also becomes the LoggedModel's artifacts).
_ARTIFACT_PREFIXES = ("weights/", "plots/", "config.json")


def log_run_artifacts(tracking_uri: str, run_id: str, run_dir: str) -> list[str]:
    """Upload the run's artifacts from its storage folder: config, curves, previews, per-class AP
    tables and charts, weights (with their model cards). Returns the artifact paths logged.

    ``run_dir`` holds ``config.json``, ``plots/*.png`` and ``weights/{best,last}/``; curves and the
    per-class AP tables are drawn from the journal here. JSON files are redacted on the way.
    """
    client = jr._client(tracking_uri)
    logged = []
    records = jr.read_journal(jr.journal_uri(run_dir))
    with tempfile.TemporaryDirectory(prefix="cocoseg-artifacts-") as tmp:
        drawn = [*plot_curves(records, Path(tmp) / "plots"), *ui.per_class_artifacts(records, Path(tmp) / "plots")]
        curves = storage.join(run_dir, "plots", ui.CURVES_FILE)
        if storage.exists(curves):  # written by the worker for the best epoch
            drawn += ui.curve_artifacts(storage.read_json(curves), Path(tmp) / "plots")
        for path in drawn:
            client.log_artifact(run_id, str(path), artifact_path="plots")
            logged.append(f"plots/{path.name}")
        base = storage.filesystem(run_dir)[1]
        for entry in storage.list_files(run_dir):
            rel = storage.filesystem(entry.uri)[1][len(base):].lstrip("/")
            if not rel.startswith(_ARTIFACT_PREFIXES):
                continue
            local = Path(tmp) / "files" / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            data = storage.read_bytes(entry.uri)
            if rel.endswith(".json"):
                data = json.dumps(redact(json.loads(data)), indent=2).encode()
            local.write_bytes(data)
            folder = str(Path(rel).parent) if "/" in rel else None
            client.log_artifact(run_id, str(local), artifact_path=folder)
            logged.append(rel)
    return logged
