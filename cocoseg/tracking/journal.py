"""The metric journal and the rank-0 logger; tracking URIs, their credentials, the server check.

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

The tracking URI comes from the config, else ``MLFLOW_TRACKING_URI``, else a SQLite file under
the storage root (or ``./.cocoseg`` when the root is on S3). Credentials in it move to MLflow's
``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` variables; every URI passed on is clean.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cocoseg import storage
from cocoseg.utils import UserError, get_logger, redact

__all__ = [
    "ATTEMPTS_NAME",
    "ATTEMPT_KINDS",
    "AUTH_ENV",
    "JOURNAL_NAME",
    "RunLogger",
    "TrackingUnavailable",
    "adopt_credentials",
    "attempts_uri",
    "auth_env",
    "create_run",
    "fast_fail",
    "finish_run",
    "flatten_params",
    "journal_uri",
    "log_params",
    "check_server",
    "preflight",
    "read_attempts",
    "read_journal",
    "record_attempt",
    "resolve_tracking_uri",
    "split_credentials",
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

# A worker must not stall for minutes on a dead server (mlflow's default is 7 retries with
# exponential backoff and a 120 s timeout); these apply unless the user set them.
_FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


# MLflow's own variables for credentials: the client adds them to every request, so a URI never
# has to carry them.
AUTH_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class TrackingUnavailable(UserError):
    """The MLflow server cannot be used (down, or our login is refused)."""


def split_credentials(uri: str) -> tuple[str, str, str]:
    """``http://user:pw@host:5000/x`` -> (``http://host:5000/x``, user, pw); no credentials: (uri, "", "")."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme.startswith("http") or parts.password is None and parts.username is None:
        return uri, "", ""
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")


def adopt_credentials(uri: str) -> str:
    """The URI without credentials; credentials it carried go to ``MLFLOW_TRACKING_USERNAME`` /
    ``_PASSWORD`` of this process, where the MLflow client (and :func:`preflight`) read them.

    So a password given in ``tracking.tracking_uri`` works, and it never reaches a param, a tag,
    a journal, a config file or a printed link: only the clean URI is passed on.
    """
    clean, user, password = split_credentials(uri)
    if user or password:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return clean


def auth_env() -> dict[str, str]:
    """The MLflow credential variables set in this process (handed to the train workers)."""
    return {k: os.environ[k] for k in AUTH_ENV if os.environ.get(k)}


def fast_fail() -> None:
    """A dead server must cost seconds, not minutes (mlflow's default is 7 retries with
    exponential backoff and a 120 s timeout); applies unless the user set these variables."""
    for key, value in _FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)


def resolve_tracking_uri(configured: str, storage_root: str) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else SQLite: ``<root>/mlflow.db`` for a local
    storage root, ``$COCOSEG_HOME/mlflow.db`` (default ``~/.cocoseg``) for an ``s3://`` one, which
    cannot hold a database. Every job (train, evaluate, register, retrain, tune) resolves through
    here, so with the same root they all land in the same store, whatever their working directory
    (a ``ray job submit`` driver runs in a fresh one).

    Credentials in the URI are moved into MLflow's variables (:func:`adopt_credentials`); the
    returned URI has none.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return adopt_credentials(uri)
    if storage.is_s3(storage_root):
        root = os.environ.get("COCOSEG_HOME") or os.path.join("~", ".cocoseg")
        if root not in _WARNED:
            _WARNED.add(root)
            log.warning("storage.root is %s but no tracking URI is set: MLflow runs go to SQLite under %s on this "
                        "machine; set tracking.tracking_uri (or MLFLOW_TRACKING_URI) to a server to share them",
                        storage_root, root)
    else:
        root = storage_root
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


_WARNED: set[str] = set()


def _http_status(url: str, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (configured URI)
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _auth_header() -> dict[str, str]:
    import base64

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None and password is not None:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


OFFLINE_HINT = "or set tracking.offline_ok=true to train on the journal and send it later (cocoseg sync-mlflow RUN_DIR)"


def preflight(uri: str, timeout: float = 5.0, hint: str = OFFLINE_HINT) -> None:
    """Raise :class:`TrackingUnavailable` (one line naming ``uri`` and the fix) when the MLflow
    server at ``uri`` is down or refuses our login; a few seconds at most. Non-HTTP URIs
    (``sqlite:///``, a folder) pass: there is no server to ask."""
    if uri.startswith(("http://", "https://")):
        check_server(uri, probe="experiments/search", error=TrackingUnavailable, hint=hint, timeout=timeout)


def check_server(uri: str, *, probe: str, error: type[Exception], hint: str = "", scope: str = "",
                 timeout: float = 5.0) -> None:
    """Ask the MLflow server at ``uri`` two plain HTTP questions with the credentials the MLflow
    client will send: ``/health`` (is it up) and ``api/2.0/mlflow/<probe>?max_results=1`` (will
    it let us in). Each failure is one ``error`` line naming the server and the fix (``hint``
    appended); ``scope`` names what a 403 refused (e.g. "the model registry")."""
    base, where, tail = uri.rstrip("/"), f"the MLflow server at {redact(uri)}", f", {hint}" if hint else ""
    try:
        status = _http_status(f"{base}/health", {}, timeout)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise error(f"{where} is not reachable ({reason}); start it (mlflow server --host ... --port ...) or fix "
                    f"tracking.tracking_uri / MLFLOW_TRACKING_URI{tail}") from None
    if status >= 500:
        raise error(f"{where} answers /health with HTTP {status}; check its log{tail}")
    status = _http_status(f"{base}/api/2.0/mlflow/{probe}?max_results=1", _auth_header(), timeout)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        detail = f"the credentials of user {user!r} were refused" if user else "no credentials were given"
        raise error(f"{where} requires authentication and {detail} (HTTP 401); set MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD")
    if status == 403:
        raise error(f"{where} refused access{' to ' + scope if scope else ''} for user {user!r} (HTTP 403)")
    if status >= 400:
        raise error(f"{where} answered {probe} with HTTP {status}")


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
