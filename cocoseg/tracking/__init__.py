"""MLflow tracking for training runs: one run per training, metrics from rank 0, an outage journal,
secrets kept out, and what the MLflow UI shows (datasets, LoggedModel, per-class AP).

- ``journal``: tracking URIs and their credentials, the server check, the rank-0
  :class:`RunLogger` and its JSONL metric journal, replay;
- ``lifecycle``: the run record (``tracking/run.json``) and the one path that creates,
  completes and finishes a run in MLflow (at the end of training and in ``cocoseg sync-mlflow``);
- ``ui``: experiment kind, dataset inputs, the LoggedModel, per-class AP artifacts;
- ``console``: the one line per epoch a person reads.
"""

from .console import EpochPrinter, epoch_line
from .journal import (
    JOURNAL_NAME,
    RunLogger,
    create_run,
    finish_run,
    flatten_params,
    journal_uri,
    read_journal,
    sync_journal,
)
from .lifecycle import (
    Completion,
    complete_run,
    end_run,
    log_run_artifacts,
    open_run,
    plot_curves,
    read_run_record,
    run_record_uri,
)
from .server import (
    AUTH_ENV,
    TrackingUnavailable,
    adopt_credentials,
    auth_env,
    check_server,
    fast_fail,
    preflight,
    resolve_tracking_uri,
    split_credentials,
)
from .ui import dataset_inputs, per_class_artifacts, per_class_table

__all__ = [
    "AUTH_ENV", "JOURNAL_NAME", "Completion", "EpochPrinter", "RunLogger", "TrackingUnavailable",
    "adopt_credentials", "auth_env", "complete_run", "create_run", "dataset_inputs", "end_run", "epoch_line",
    "fast_fail", "finish_run", "flatten_params", "journal_uri", "log_run_artifacts", "open_run",
    "per_class_artifacts", "per_class_table", "plot_curves", "preflight", "check_server", "read_journal", "read_run_record",
    "resolve_tracking_uri", "run_record_uri", "split_credentials", "sync_journal",
]
