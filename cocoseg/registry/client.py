"""Connecting to MLflow: resolve the tracking URI and fail fast, in words, before any write.

The MLflow client retries a dead server with exponential back-off for minutes and reports a
refused login deep inside a REST stack trace. :func:`connect` first asks the server itself (one
plain HTTP request each, a few seconds at most): ``/health`` for "is it up", then a one-row
registry search with the same credentials the MLflow client will send
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, or ``MLFLOW_TRACKING_TOKEN``) for
"will it let us in". Non-HTTP URIs (``sqlite:///…``, a folder) need neither check.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request

from cocoseg.utils import UserError

__all__ = ["RegistryError", "connect", "resolve_tracking_uri"]


class RegistryError(UserError):
    """The registry cannot do what was asked (server down, login refused, bad version, ...)."""


def resolve_tracking_uri(tracking_uri: str = "", storage_root: str = "./.cocoseg") -> str:
    """The URI to use: the config's, else ``$MLFLOW_TRACKING_URI``, else SQLite under the root;
    credentials in it move to MLflow's variables (the same rule as training's)."""
    from cocoseg import tracking

    return tracking.resolve_tracking_uri(tracking_uri, storage_root)


def _auth_header() -> dict[str, str]:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user is not None and password is not None:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _get(url: str, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (configured URI)
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def preflight(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`RegistryError` when the server at ``uri`` is down or refuses our login."""
    base = uri.rstrip("/")
    try:
        status = _get(f"{base}/health", {}, timeout)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f"the MLflow server at {uri} is not reachable ({reason}); start it or fix "
                            "tracking.tracking_uri / MLFLOW_TRACKING_URI") from None
    if status >= 500:
        raise RegistryError(f"the MLflow server at {uri} answers /health with HTTP {status}")
    status = _get(f"{base}/api/2.0/mlflow/registered-models/search?max_results=1", _auth_header(), timeout)
    if status == 401:
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        detail = f"the credentials of user {who!r} were refused" if who else "no credentials were given"
        raise RegistryError(f"the MLflow server at {uri} requires authentication and {detail} (HTTP 401); "
                            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if status == 403:
        raise RegistryError(f"the MLflow server at {uri} refused access to the model registry for user "
                            f"{os.environ.get('MLFLOW_TRACKING_USERNAME')!r} (HTTP 403)")
    if status >= 400:
        raise RegistryError(f"the MLflow server at {uri} answered the registry check with HTTP {status}")


def connect(tracking_uri: str):
    """Preflight ``tracking_uri`` and return an ``MlflowClient`` for it (tracking and registry)."""
    from mlflow import MlflowClient

    if tracking_uri.startswith(("http://", "https://")):
        preflight(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
