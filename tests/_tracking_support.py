"""The one basic-auth MLflow server of the suite (``auth_server``, also the registry-auth test's) and
one tiny real demo run against it, shared by the secrets test and the MLflow UI test (one server
and one training run for all three, to keep the suite short)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from conftest import BIN, REPO, free_port, stop, wait_http

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
                   # scrypt check (~0.15 CPU-s), ~170 of them for the demo run and its UI pages
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


DEMO_OVERRIDES = ["train.epochs=1", "model.imgsz=64", "export.imgsz=64",
                  "scaling.cpus_per_worker=0.5", "data.actors=1", "data.cpus_per_actor=0.5",
                  "scaling.threads_per_worker=1", "tracking.system_metrics=false", "tracking.experiment=secret-demo"]


@pytest.fixture(scope="session", name="secret_demo")
def secret_demo_fixture(auth_server, tmp_path_factory):
    """``python -m pipelines.demo`` (its own local Ray) with the password in MLFLOW_TRACKING_URI."""
    root = tmp_path_factory.mktemp("secret-demo")
    host = auth_server["uri"].split("://", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "RAY_ADDRESS"))}
    env.update(MLFLOW_TRACKING_URI=f"http://{ADMIN}:{auth_server['password']}@{host}",
               PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", "--root", str(root / "root"), "--images", "24",
                           *DEMO_OVERRIDES], capture_output=True, text=True, env=env, cwd=root, timeout=1500)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {"demo_root": root / "root", "stdout": proc.stdout, "stderr": proc.stderr, "server": auth_server}


