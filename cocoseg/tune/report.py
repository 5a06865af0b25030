"""What ``pipelines.tune`` keeps of a search: per-trial rows, MLflow marks, the table and the plot.

Each trial is an ordinary training run (``<storage.root>/runs/<search>-<trial id>``) whose MLflow
run is nested under the search's parent run. After the search, :func:`trial_rows` reads one row
per trial from Tune's results and the run folder, :func:`mark_trial_run` tags each trial's MLflow
run (``tune.status``: completed / stopped_early / error; a stopped run ends as ``KILLED`` with
its curves and weights sent), and :func:`write_report` writes ``results.csv``, ``results.json``
and ``metric_vs_params.png`` beside the search state, then logs them on the parent run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cocoseg import storage, tracking
from cocoseg.engine.worker import FITNESS_KEY
from cocoseg.utils import UserError, get_logger

__all__ = ["EPOCHS_DONE", "SCORE", "error_line", "failure_summary", "search_score", "best_row", "mark_trial_run",
           "trial_rows", "write_report"]

log = get_logger(__name__)

# Reported with every epoch of a trial (epoch + 1): ASHA's clock. Tune's own training_iteration
# starts again at 1 when a trial restarts after a lost driver, while the run resumes at its epoch.
EPOCHS_DONE = "epochs_done"
# What ASHA ranks trials on: val mask AP50-95, ties broken by the lower train loss. Early in a
# search every trial often has AP 0 (nothing detected yet); without the tie-break ASHA could not
# stop any of them. The tie-break term is below 1e-6, far under any real AP difference.
SCORE = "score"


def search_score(metrics: Mapping[str, Any]) -> float:
    """``val/mask_ap50_95`` (-1 on an epoch that was not validated) + 1e-6 / (1 + train loss)."""
    loss = float(metrics.get("train/loss", math.inf))
    tie_break = 1e-6 / (1.0 + loss) if math.isfinite(loss) and loss >= 0 else 0.0
    return float(metrics.get(FITNESS_KEY, metrics.get("val/mask_ap50_95", -1.0))) + tie_break


def _first_step_at(run_dir: str) -> float | None:
    """When the run's first worker was ready for its first batch (its earliest attempt record)."""
    try:
        times = [storage.read_json(e.uri).get("time") for e in storage.list_files(storage.join(run_dir, "workers"))]
    except FileNotFoundError:
        return None
    return min((t for t in times if t), default=None)


def trial_rows(results: Any, space_keys: Sequence[str], run_dir_of, epochs: int,
               started: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per trial of a Tune ``ResultGrid``: its params, status, epochs and metrics."""
    rows = []
    for result in results:
        last = result.metrics or {}
        trial_id = str(last.get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1])  # dir = trial id
        history = result.metrics_dataframe
        fitness = [float(v) for v in history[FITNESS_KEY].dropna()] if history is not None and FITNESS_KEY in history else []
        done = int(last.get(EPOCHS_DONE, 0))
        status = "error" if result.error else "completed" if done >= epochs else "stopped_early"
        run_dir = run_dir_of(trial_id)
        record = tracking.read_run_record(run_dir)
        rows.append({"trial_id": trial_id, "status": status, "epochs_done": done,
                     "best_mask_ap50_95": max(fitness, default=float(last.get(FITNESS_KEY, -1.0))),
                     "last_mask_ap50_95": float(last.get(FITNESS_KEY, -1.0)),
                     "last_train_loss": float(last.get("train/loss", math.nan)),
                     **{key: result.config.get(key) for key in space_keys},
                     "mlflow_run_id": record.get("run_id", ""), "run_dir": run_dir,
                     "started_at": started.get(trial_id), "first_step_at": _first_step_at(run_dir),
                     "error": error_line(result.error) if result.error else ""})
    return sorted(rows, key=lambda r: r["trial_id"])


# A line of Ray's error text that names the exception: "cocoseg.x.TrainInputError: train.snapshot ..."
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?:\([^)]*\))?: (.+)$")


def error_line(error: BaseException) -> str:
    """The first line of what a trial's error says, without Ray's wrapping (``RayTaskError(...)``,
    the remote traceback, pids), so the same failure in two trials reads the same."""
    seen = 0
    while getattr(error, "cause", None) is not None and seen < 8:  # RayTaskError / TuneError -> the original
        error, seen = error.cause, seen + 1
    text = str(error).strip()
    named = [m for m in (_EXCEPTION_LINE.match(line.strip()) for line in text.splitlines()) if m]
    if named:
        name, message = named[-1].groups()
        return f"{name.rsplit('.', 1)[-1]}: {message}"[:300]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}"[:300]


def failure_summary(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per distinct trial error: the error's first line and which trials it stopped."""
    by_error: dict[str, list[str]] = {}
    for row in rows:
        if row["status"] == "error":
            by_error.setdefault(row["error"] or "(no error text)", []).append(str(row["trial_id"]))
    return [f"{len(ids)} trial(s) failed ({', '.join(ids)}): {error}" for error, ids in by_error.items()]


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The best trial: highest val mask AP50-95 at any epoch; ties go to the trial that trained
    longer (ASHA kept it), then to the lower final train loss."""
    ok = [r for r in rows if r["status"] != "error"]
    if not ok:
        raise UserError(f"all {len(rows)} trial(s) of the search failed ({len(failure_summary(rows))} distinct "
                        "error(s), one line each above and in failures.txt beside results.json)")

    def loss(r: Mapping[str, Any]) -> float:
        value = r["last_train_loss"]
        return -value if isinstance(value, float) and not math.isnan(value) else -math.inf

    return max(ok, key=lambda r: (r["best_mask_ap50_95"], r["epochs_done"], loss(r)))


def mark_trial_run(row: Mapping[str, Any], space_keys: Sequence[str], search: str, tracking_uri: str) -> None:
    """Tag the trial's MLflow run (its draw as ``tune.overrides``, beside the params of the resolved
    config it trained with) and end a run its train job left open (idempotent): a stopped trial's
    as KILLED; a completed trial's as FINISHED (Tune stops a trial as soon as its last epoch
    reports, which can be before its train job ended the run; every epoch is journaled by then)."""
    record = tracking.read_run_record(row["run_dir"])
    if not record.get("run_id"):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    tags = {"tune.search": search, "tune.trial_id": row["trial_id"], "tune.status": row["status"],
            "tune.stopped_early": str(row["status"] == "stopped_early").lower(),
            "tune.overrides": " ".join(f"{k}={json.dumps(row[k])}" for k in space_keys)}
    for key, value in tags.items():
        client.set_tag(record["run_id"], key, value)
    if not record.get("completed"):
        tracking.end_run(row["run_dir"], {"completed": "FINISHED", "stopped_early": "KILLED"}.get(row["status"], "FAILED"))


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _plot(rows: Sequence[Mapping[str, Any]], space: Mapping[str, Mapping[str, Any]]) -> bytes:
    """PNG: best val mask AP50-95 of each trial against each searched parameter (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        (kind, args), = space[key].items()
        for status, marker in (("completed", "o"), ("stopped_early", "x")):
            pts = [(r[key], r["best_mask_ap50_95"]) for r in rows if r["status"] == status]
            if kind == "choice":
                pts = [(list(map(str, args)).index(str(x)), y) for x, y in pts]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=status.replace("_", " "))
        if kind == "choice":
            ax.set_xticks(range(len(args)), [str(a) for a in args])
        elif kind == "loguniform":  # the space's bounds, so the log axis never meets a value <= 0
            ax.set_xscale("log")
            ax.set_xlim(float(args[0]), float(args[1]))
        ax.set_xlabel(key)
        ax.set_ylabel("val mask AP50-95 (best epoch)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(rows: Sequence[Mapping[str, Any]], space: Mapping[str, Mapping[str, Any]], tune_dir: str,
                 tracking_uri: str, parent_run_id: str) -> list[str]:
    """results.csv / results.json / metric_vs_params.png under ``tune_dir``, logged on the parent run."""
    files = {"results.csv": _csv(rows).encode(), "results.json": json.dumps(list(rows), indent=2).encode()}
    failures = failure_summary(rows)
    if failures:
        files["failures.txt"] = ("\n".join(failures) + "\n").encode()
    if any(r["status"] != "error" for r in rows):  # no point to draw when every trial failed
        try:
            files["metric_vs_params.png"] = _plot(rows, space)
        except ImportError:  # matplotlib is a dependency; a slimmed image without it still gets the table
            log.warning("matplotlib is not installed: no metric_vs_params.png")
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri)
    uris = []
    for name, blob in files.items():
        uri = storage.join(tune_dir, name)
        storage.write_bytes(uri, blob)
        uris.append(uri)
        with storage.local_copy(uri) as local:
            client.log_artifact(parent_run_id, str(local), artifact_path="tune")
    return uris
