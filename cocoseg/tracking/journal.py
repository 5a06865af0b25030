"""The metric journal and the rank-0 logger.

Who does what:

- The *driver* (``cocoseg/engine/trainer.py``) opens the run before any worker starts (so a restarted
  worker group logs into the same run) through ``lifecycle.open_run``, and ends it through
  ``lifecycle.end_run``; both are journaled in the run record (``lifecycle.py``).
- Rank 0 of the train workers holds a :class:`RunLogger`: per-epoch metrics, system metrics.

Every epoch's metrics are first appended to a JSONL *journal* beside the checkpoints
(``<run dir>/tracking/metrics.jsonl``), then sent. If the server does not answer, training goes
on, the logger says so once, and keeps the unsent epochs; it retries at every later epoch and at
the end. Whatever is still unsent can be replayed with ``cocoseg sync-mlflow <run dir>``.
Sending is idempotent per step: a step that MLflow already holds (say the worker died after
logging an epoch but before its checkpoint was registered, and the epoch was trained again) is
not logged a second time, so every epoch's metrics land exactly once.

The tracking URI, its credentials and the server check live in ``server.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from cocoseg import storage
from cocoseg.utils import get_logger, redact

from .server import (
    fast_fail,
)

__all__ = [
    "ATTEMPTS_NAME",
    "ATTEMPT_KINDS",
    "JOURNAL_NAME",
    "RunLogger",
    "attempts_uri",
    "create_run",
    "finish_run",
    "flatten_params",
    "journal_uri",
    "log_params",
    "read_attempts",
    "read_journal",
    "record_attempt",
    "sync_journal",
]

log = get_logger(__name__)

JOURNAL_NAME = "metrics.jsonl"
# The attempt journal (``<run dir>/tracking/attempts.jsonl``): what happened to the worker groups,
# one JSON line each. ``start``: a group starts (rank 0: world size, epoch, ``ni``, the checkpoint it
# resumed from); ``preemption``: the first notice an attempt saw; ``jit_checkpoint``: a checkpoint
# written on it; ``progress``: an optimiser step after the notice (so the steps a reclaim cost can
# be counted, ``cocoseg.engine.preemption.steps_lost``); ``hang``: the watchdog failed the group (the
# stuck rank(s), the frame, where the stacks are; ``cocoseg.engine.watchdog``).
ATTEMPTS_NAME = "attempts.jsonl"
ATTEMPT_KINDS = ("start", "preemption", "jit_checkpoint", "progress", "hang")
STEP_KEY = "epoch"  # logged with every epoch; its history tells which steps MLflow already holds

FAILED_KEY = "validation_error"  # a journal record's field: why the epoch's validation failed


def journal_uri(run_dir: str) -> str:
    return storage.join(run_dir, "tracking", JOURNAL_NAME)


def attempts_uri(run_dir: str) -> str:
    return storage.join(run_dir, "tracking", ATTEMPTS_NAME)


def record_attempt(run_dir: str, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Append one record (``kind``, ``time`` and ``fields``) to the run's attempt journal.

    One writer at a time (rank 0, or the one rank that reports a hang); the file is rewritten
    whole, which S3 needs and which keeps a reader from ever seeing half a line."""
    if kind not in ATTEMPT_KINDS:
        raise ValueError(f"attempt journal: unknown kind {kind!r} (one of {', '.join(ATTEMPT_KINDS)})")
    uri = attempts_uri(run_dir)
    record = {"kind": kind, "time": time.time(), **fields}
    old = storage.read_text(uri) if storage.exists(uri) else ""
    storage.write_text(uri, old + json.dumps(record, default=str) + "\n")
    return record


def read_attempts(run_dir: str) -> list[dict[str, Any]]:
    """The attempt journal's records, oldest first (empty when there is none)."""
    uri = attempts_uri(run_dir)
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr0": 0.01}}`` -> ``{"train.lr0": "0.01"}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return redact(out)


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def create_run(*, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any],
               tags: Mapping[str, str], parent_run_id: str = "", artifact_location: str = "") -> str:
    """Create the training run (nested under ``parent_run_id`` if given); returns its id.

    The experiment is created as a model-training experiment (its ``mlflow.experimentKind``).
    ``artifact_location`` applies when the experiment is new (the embedded SQLite store would
    otherwise put artifacts in ``./mlruns`` of whatever the current directory is).
    """
    from .ui import set_experiment_kind

    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location or None)
    set_experiment_kind(client, exp_id)
    all_tags = redact({k: str(v) for k, v in tags.items()})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name or None, tags=all_tags)
    log_params(client, run.info.run_id, flatten_params(params))
    return run.info.run_id


def log_params(client, run_id: str, flat: Mapping[str, str]) -> None:
    """Log flattened params (redacted again: this is an edge) in batches of 100, MLflow's limit."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in redact(dict(flat)).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def read_journal(uri: str) -> list[dict[str, Any]]:
    """The records of a journal (empty when it does not exist); one dict per epoch."""
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def _logged_steps(client, run_id: str) -> set[int]:
    return {int(m.step) for m in client.get_metric_history(run_id, STEP_KEY)}


def _send(client, run_id: str, record: Mapping[str, Any], model_id: str = "") -> None:
    from mlflow.entities import Metric

    from .ui import metric_key

    ts = int(record["timestamp"] * 1000)
    metrics = [Metric(metric_key(k), float(v), ts, int(record["step"]), model_id=model_id or None)
               for k, v in record["metrics"].items()]
    tags = []
    if record.get(FAILED_KEY):  # an epoch whose validation failed: the reason, beside its metrics
        from mlflow.entities import RunTag

        tags = [RunTag(f"validation_failed.epoch_{int(record['step'])}", str(record[FAILED_KEY])[:5000])]
    client.log_batch(run_id, metrics=metrics, tags=tags)  # one request: the step lands whole or not at all


class RunLogger:
    """Rank-0 metric logger for an existing MLflow run, with the outage journal.

    ``log_epoch(step, metrics)`` journals the record, then sends every unsent record in order.
    ``close()`` stops the system-metrics thread and makes a last attempt to send.
    """

    def __init__(self, *, tracking_uri: str, run_id: str, journal: str, system_metrics: bool = True,
                 system_metrics_interval: float = 10.0, credentials: Mapping[str, str] | None = None,
                 epochs: int = 0, model_id: str = ""):
        """``run_id`` empty: MLflow was down when the run started (``tracking.offline_ok``); the
        epochs are only journaled and the driver (or ``cocoseg sync-mlflow``) sends them.
        ``credentials``: MLflow's auth variables from the driver (a worker of an existing
        cluster does not inherit the driver's environment)."""
        fast_fail()
        os.environ.update(credentials or {})
        self.tracking_uri = redact(tracking_uri)
        self.run_id = run_id
        self.journal = journal
        self.records = read_journal(journal)  # a restarted worker continues the same journal
        self._pending = list(self.records)
        self._known_steps: set[int] | None = None
        self.offline = False
        self._warned = False
        self._monitor = None
        self._monitor_interval = system_metrics_interval
        self.epochs = epochs
        self.model_id = model_id  # the run's LoggedModel: metrics are logged against it
        if system_metrics and run_id:
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

    def log_epoch(self, step: int, metrics: Mapping[str, float], validation_error: str = "") -> None:
        """Journal and send one epoch's record; ``validation_error``: why its validation failed
        (kept in the record, sent as the MLflow tag ``validation_failed.epoch_<step>``)."""
        record = {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "step": int(step),
                  "timestamp": time.time(), "metrics": {STEP_KEY: float(step), **{k: float(v) for k, v in metrics.items()}}}
        if validation_error:
            record[FAILED_KEY] = validation_error
        # in epoch order, however the records arrive (asynchronous validation finishes out of order)
        self.records = sorted([r for r in self.records if r["step"] != record["step"]] + [record], key=lambda r: r["step"])
        storage.write_text(self.journal, "".join(json.dumps(r) + "\n" for r in self.records))
        self._pending.append(record)
        self.flush()

    def flush(self) -> bool:
        """Send the pending records; returns True when nothing is left unsent."""
        if not self._pending:
            return True
        if not self.run_id:
            self.offline = True
            return False
        try:
            client = _client(self.tracking_uri)
            if self._known_steps is None:
                self._known_steps = _logged_steps(client, self.run_id)
            while self._pending:
                record = self._pending[0]
                if record["step"] not in self._known_steps:
                    _send(client, self.run_id, record, self.model_id)
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
            monitor, self._monitor = self._monitor, None
            try:
                monitor.finish()
                # MLflow's monitor drops the samples of an unfinished interval, so a run shorter
                # than one interval had no system metrics at all: one last sample, at the end.
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
            except Exception:  # the monitor's last upload may fail when the server is gone
                pass
        return self.flush()


def sync_journal(journal: str, tracking_uri: str = "", run_id: str = "", model_id: str = "") -> tuple[int, int]:
    """Replay a journal into MLflow; returns (steps sent, steps already there).

    ``tracking_uri`` overrides the one recorded in the journal (e.g. the server moved);
    ``run_id`` fills records journaled before the MLflow run existed (an offline start);
    ``model_id``: the run's LoggedModel, which the metrics are logged against.
    """
    records = read_journal(journal)
    sent = present = 0
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        rid = r["run_id"] or run_id
        if not rid:
            continue
        by_run.setdefault((tracking_uri or r["tracking_uri"], rid), []).append(r)
    for (uri, run_id), items in by_run.items():
        client = _client(uri)
        known = _logged_steps(client, run_id)
        for r in items:
            if r["step"] in known:
                present += 1
                continue
            _send(client, run_id, r, model_id)
            known.add(r["step"])
            sent += 1
    return sent, present
