"""Where the tracking server is and whether it answers: the tracking URI, its credentials, the check.

The tracking URI comes from the config, else ``MLFLOW_TRACKING_URI``, else a SQLite file under
the storage root (or ``./.cocoseg`` when the root is on S3). Credentials in it move to MLflow's
``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` variables; every URI passed on is clean. A dead or
refusing server is found before a job starts (:func:`preflight`, :func:`check_server`): one line,
the URI and the fix, never a stall in MLflow's retries (:func:`fast_fail`).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cocoseg import storage
from cocoseg.utils import UserError, get_logger, redact

__all__ = ["AUTH_ENV", "OFFLINE_HINT", "TrackingUnavailable", "adopt_credentials", "auth_env", "check_server",
           "fast_fail", "preflight", "resolve_tracking_uri", "split_credentials"]

log = get_logger(__name__)


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
