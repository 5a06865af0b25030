"""Connecting to the MLflow registry: fail fast, in words, before any write (the tracking URI is
:func:`cocoseg.tracking.resolve_tracking_uri`'s, the one resolver).

The MLflow client retries a dead server with exponential back-off for minutes and reports a
refused login deep inside a REST stack trace. :func:`connect` first asks the server itself (one
plain HTTP request each, a few seconds at most): ``/health`` for "is it up", then a one-row
registry search with the same credentials the MLflow client will send
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, or ``MLFLOW_TRACKING_TOKEN``) for
"will it let us in". Non-HTTP URIs (``sqlite:///…``, a folder) need neither check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from cocoseg.utils import UserError, restore_env

__all__ = ["FLUENT_ENV", "RegistryError", "connect", "download", "mlflow_at"]


class RegistryError(UserError):
    """The registry cannot do what was asked (server down, login refused, bad version, ...)."""


def preflight(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`RegistryError` when the server at ``uri`` is down or refuses our login to
    its model registry (the same two questions as training's preflight)."""
    from cocoseg.tracking import check_server

    check_server(uri, probe="registered-models/search", error=RegistryError, scope="the model registry",
                 timeout=timeout)


def connect(tracking_uri: str):
    """Preflight ``tracking_uri`` and return an ``MlflowClient`` for it (tracking and registry)."""
    from mlflow import MlflowClient

    if tracking_uri.startswith(("http://", "https://")):
        preflight(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# what MLflow's fluent setters export into os.environ
FLUENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


@contextlib.contextmanager
def mlflow_at(tracking_uri: str, *, experiment: str = "") -> Iterator[None]:
    """MLflow's process-wide state pointed at ``tracking_uri`` (tracking and registry) and, when given,
    ``experiment`` for the block; the caller's process as it was afterwards.

    Two MLflow paths read that state whatever they are passed: the fluent API (``log_model`` needs an
    active run) and ``models:/`` downloads (MLflow 3.17 resolves the version through
    ``mlflow.get_registry_uri()``, not the ``registry_uri`` argument). ``set_tracking_uri``,
    ``set_registry_uri`` and ``set_experiment`` also export their values into ``os.environ``: left
    there, every later subprocess of a process that registered in-process (a test session, a notebook,
    a retrain loop) would talk to this server, and a later job in it would find the wrong registry."""
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service, fluent

    env = {k: os.environ.get(k) for k in FLUENT_ENV}
    uris = _tracking_service.utils._tracking_uri, _model_registry.utils._registry_uri
    active_experiment = fluent._active_experiment_id
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        if experiment:
            mlflow.set_experiment(experiment)
        yield
    finally:
        mlflow.set_tracking_uri(uris[0])
        mlflow.set_registry_uri(uris[1])
        fluent._active_experiment_id = active_experiment
        restore_env(env)


def download(tracking_uri: str, artifact_uri: str, dst_path: str) -> str:
    """``mlflow.artifacts.download_artifacts`` of ``artifact_uri`` (``models:/NAME/VERSION/...`` or
    ``runs:/...``) from the store at ``tracking_uri``; -> the local path."""
    import mlflow

    with mlflow_at(tracking_uri):
        return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst_path,
                                                   tracking_uri=tracking_uri, registry_uri=tracking_uri)
