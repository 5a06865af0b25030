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

from cocoseg.utils import UserError

__all__ = ["RegistryError", "connect"]


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
