"""The one basic-auth MLflow server of the suite (``auth_server``): the chaos test trains against it
with the password in the tracking URI, the registry-auth test registers through it."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, free_port, stop, wait_http

ADMIN = "admin"


@pytest.fixture(scope="session", name="auth_server")
def auth_server_fixture(tmp_path_factory):
    """``mlflow server --app-name basic-auth`` whose admin password is a fresh random string."""
    root = tmp_path_factory.mktemp("mlflow-auth-secret")
    password = "pw-" + secrets.token_hex(12)
    ini = root / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                   f"admin_username = {ADMIN}\nadmin_password = {password}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # MLflow's cache of good logins (off by default): without it every request pays a
                   # scrypt check (~0.15 CPU-s); a short training run makes a few hundred (the chaos run here)
                   "auth_cache_ttl_seconds = 600\n")
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
        wait_http(f"{uri}/health", 180, proc, log)
        yield {"uri": uri, "password": password, "root": root, "ini": ini}
    finally:
        stop(proc)


def secret_uri(server: dict) -> str:
    """``server``'s URI with the admin password inside it, as a person pastes it."""
    return server["uri"].replace("://", f"://{ADMIN}:{server['password']}@", 1)


def password_leaks(server: dict, *folders: Path) -> list[str]:
    """The files under ``folders`` and the server's own folder (its config file aside, which holds
    it, of course) that hold ``server``'s admin password."""
    needle = server["password"].encode()
    files = [p for folder in (*folders, server["root"]) for p in folder.rglob("*")
             if p.is_file() and not p.is_symlink() and p != server["ini"]]
    return [str(p) for p in files if needle in p.read_bytes()]
