"""MLflow tracking for training runs: one run per training, metrics from rank 0, an outage journal.

Who does what:

- The *driver* (``pipelines/train.py``) calls :func:`create_run` before any worker starts (so a
  restarted worker group logs into the same run), nested under a parent run when a pipeline
  launches it, with the resolved config as params and the snapshot / commit / Ray job / variant
  tags; after training it calls :func:`log_run_artifacts` and :func:`finish_run`.
- Rank 0 of the train workers holds a :class:`RunLogger`: per-epoch metrics, system metrics.

Every epoch's metrics are first appended to a JSONL *journal* beside the checkpoints
(``<run dir>/tracking/metrics.jsonl``), then sent. If the server does not answer, training goes
on, the logger says so once, and keeps the unsent epochs; it retries at every later epoch and at
the end. Whatever is still unsent can be replayed with ``cocoseg sync-mlflow <run dir>``.
Sending is idempotent per step: a step that MLflow already holds (say the worker died after
logging an epoch but before its checkpoint was registered, and the epoch was trained again) is
not logged a second time, so every epoch's metrics land exactly once.

The tracking URI comes from the config, else ``MLFLOW_TRACKING_URI``, else a SQLite file under
the storage root (or ``./.cocoseg`` when the root is on S3).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cocoseg import storage
from cocoseg.utils import get_logger

__all__ = [
    "JOURNAL_NAME",
    "RunLogger",
    "create_run",
    "finish_run",
    "flatten_params",
    "journal_uri",
    "log_run_artifacts",
    "plot_curves",
    "read_journal",
    "resolve_tracking_uri",
    "sync_journal",
]

log = get_logger(__name__)

JOURNAL_NAME = "metrics.jsonl"
STEP_KEY = "epoch"  # logged with every epoch; its history tells which steps MLflow already holds

# A worker must not stall for minutes on a dead server (mlflow's default is 7 retries with
# exponential backoff and a 120 s timeout); these apply unless the user set them.
_FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def resolve_tracking_uri(configured: str, storage_root: str) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = "./.cocoseg" if storage.is_s3(storage_root) else storage_root
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def journal_uri(run_dir: str) -> str:
    return storage.join(run_dir, "tracking", JOURNAL_NAME)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr0": 0.01}}`` -> ``{"train.lr0": "0.01"}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def create_run(*, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any],
               tags: Mapping[str, str], parent_run_id: str = "", artifact_location: str = "") -> str:
    """Create the training run (nested under ``parent_run_id`` if given); returns its id.

    ``artifact_location`` applies when the experiment is new (the embedded SQLite store would
    otherwise put artifacts in ``./mlruns`` of whatever the current directory is).
    """
    from mlflow.entities import Param

    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location or None)
    all_tags = {k: str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name or None, tags=all_tags)
    items = [Param(k, v[:6000]) for k, v in flatten_params(params).items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def read_journal(uri: str) -> list[dict[str, Any]]:
    """The records of a journal (empty when it does not exist); one dict per epoch."""
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def _logged_steps(client, run_id: str) -> set[int]:
    return {int(m.step) for m in client.get_metric_history(run_id, STEP_KEY)}


def _send(client, run_id: str, record: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric

    ts = int(record["timestamp"] * 1000)
    metrics = [Metric(k, float(v), ts, int(record["step"])) for k, v in record["metrics"].items()]
    client.log_batch(run_id, metrics=metrics)  # one request: the step lands whole or not at all


class RunLogger:
    """Rank-0 metric logger for an existing MLflow run, with the outage journal.

    ``log_epoch(step, metrics)`` journals the record, then sends every unsent record in order.
    ``close()`` stops the system-metrics thread and makes a last attempt to send.
    """

    def __init__(self, *, tracking_uri: str, run_id: str, journal: str, system_metrics: bool = True,
                 system_metrics_interval: float = 10.0):
        for key, value in _FAST_FAIL_ENV.items():
            os.environ.setdefault(key, value)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.journal = journal
        self.records = read_journal(journal)  # a restarted worker continues the same journal
        self._pending = list(self.records)
        self._known_steps: set[int] | None = None
        self.offline = False
        self._warned = False
        self._monitor = None
        self._monitor_interval = system_metrics_interval
        if system_metrics:
            self._start_monitor(system_metrics_interval)

    def _start_monitor(self, interval: float) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval,
                                                 resume_logging=True, tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as exc:  # psutil missing or server down: metrics still work
            log.warning("system metrics are off for run %s: %s", self.run_id, exc)
            self._monitor = None

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "step": int(step),
                  "timestamp": time.time(), "metrics": {STEP_KEY: float(step), **{k: float(v) for k, v in metrics.items()}}}
        self.records = [r for r in self.records if r["step"] != record["step"]] + [record]
        storage.write_text(self.journal, "".join(json.dumps(r) + "\n" for r in self.records))
        self._pending.append(record)
        self.flush()

    def flush(self) -> bool:
        """Send the pending records; returns True when nothing is left unsent."""
        if not self._pending:
            return True
        try:
            client = _client(self.tracking_uri)
            if self._known_steps is None:
                self._known_steps = _logged_steps(client, self.run_id)
            while self._pending:
                record = self._pending[0]
                if record["step"] not in self._known_steps:
                    _send(client, self.run_id, record)
                    self._known_steps.add(record["step"])
                self._pending.pop(0)
        except Exception as exc:  # any transport or server error: keep training, keep the record
            if not self._warned:
                log.warning("MLflow at %s is unreachable (%s); training goes on, metrics are kept in %s "
                            "and sent when it answers again (or run: cocoseg sync-mlflow %s)",
                            self.tracking_uri, type(exc).__name__, self.journal,
                            self.journal.rsplit("/tracking/", 1)[0])
                self._warned = True
            self.offline = True
            return False
        if self.offline:
            log.info("MLflow at %s answers again; buffered metrics sent", self.tracking_uri)
            self.offline = False
            self._revive_monitor()
        return True

    def _revive_monitor(self) -> None:
        """MLflow's system-metrics thread ends at its first failed request; start a new one (it
        resumes the step count) once the server answers again. Samples of the outage are lost:
        they are host readings, not training metrics."""
        thread = getattr(self._monitor, "_process", None)  # mlflow keeps its thread there
        if self._monitor is not None and (thread is None or not thread.is_alive()):
            self._start_monitor(self._monitor_interval)

    def close(self) -> bool:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # the monitor's last upload may fail when the server is gone
                pass
        return self.flush()


def sync_journal(journal: str, tracking_uri: str = "") -> tuple[int, int]:
    """Replay a journal into MLflow; returns (steps sent, steps already there).

    ``tracking_uri`` overrides the one recorded in the journal (e.g. the server moved).
    """
    records = read_journal(journal)
    sent = present = 0
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        by_run.setdefault((tracking_uri or r["tracking_uri"], r["run_id"]), []).append(r)
    for (uri, run_id), items in by_run.items():
        client = _client(uri)
        known = _logged_steps(client, run_id)
        for r in items:
            if r["step"] in known:
                present += 1
                continue
            _send(client, run_id, r)
            known.add(r["step"])
            sent += 1
    return sent, present


def plot_curves(records: Iterable[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """Training curves from journal records: ``losses.png``, ``metrics.png`` (AP), ``lr.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted(records, key=lambda r: r["step"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = {"losses.png": lambda k: k.startswith(("train/loss", "val/loss")),
              "metrics.png": lambda k: k.startswith("val/") and "ap" in k,
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


def log_run_artifacts(tracking_uri: str, run_id: str, run_dir: str) -> list[str]:
    """Upload the run's artifacts from its storage folder: config, model card, curves, weights.

    ``run_dir`` holds ``config.json``, ``plots/*.png`` and ``weights/{best,last}/``; curves are
    drawn from the journal here. Returns the artifact paths logged.
    """
    import tempfile

    client = _client(tracking_uri)
    logged = []
    with tempfile.TemporaryDirectory(prefix="cocoseg-artifacts-") as tmp:
        for path in plot_curves(read_journal(journal_uri(run_dir)), Path(tmp) / "plots"):
            client.log_artifact(run_id, str(path), artifact_path="plots")
            logged.append(f"plots/{path.name}")
        for entry in storage.list_files(run_dir):
            rel = storage.filesystem(entry.uri)[1][len(storage.filesystem(run_dir)[1]):].lstrip("/")
            if not rel.startswith(("weights/", "plots/", "config.json")):
                continue
            local = Path(tmp) / "files" / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(storage.read_bytes(entry.uri))
            folder = str(Path(rel).parent) if "/" in rel else None
            client.log_artifact(run_id, str(local), artifact_path=folder)
            logged.append(rel)
    return logged
