"""The production set-up: ``mlflow server --app-name basic-auth`` refuses unauthenticated and
wrongly authenticated requests with a clear error and nothing registered; valid credentials work."""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import BIN, free_port, stop, wait_http
from export_helpers import make_export

from cocoseg.registry import CHAMPION, alias_version, connect, register_export

ADMIN = "admin"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    password = secrets.token_urlsafe(12)
    ini = root / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                   f"admin_username = {ADMIN}\nadmin_password = {password}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    exe = BIN / "mlflow"
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--app-name", "basic-auth",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", 120, proc, log)
        yield uri, password
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("auth-export") / "exp", metric=0.3)


def test_unauthenticated_request_is_refused(auth_server):
    uri, _ = auth_server
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/search?max_results=1", timeout=10)
    assert err.value.code == 401


def test_register_without_or_with_wrong_credentials_fails_cleanly(auth_server, export_dir, capsys, monkeypatch):
    from cocoseg.cli import main

    uri, password = auth_server
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    name = f"seg-{uuid.uuid4().hex[:8]}"
    args = ["register", str(export_dir), f"tracking.tracking_uri={uri}", "--name", name]
    assert main(args) == 2
    assert "requires authentication and no credentials were given (HTTP 401)" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    assert main(args) == 2
    assert "credentials of user 'admin' were refused" in capsys.readouterr().err

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = connect(uri)
    assert not client.search_registered_models(f"name='{name}'")  # nothing half-registered
    reg = register_export(export_dir, name=name, tracking_uri=uri)
    assert reg.decision.decision == "bootstrap"
    assert alias_version(client, name, CHAMPION).version == reg.version
