"""Secrets never leave: the one redaction function, and a whole demo (ingest, train, export,
register) against a real ``mlflow server --app-name basic-auth`` with the admin password in the
tracking URI. The password is then searched for in every byte of the run folder, the server's
backend store and artifacts, and the job's stdout and stderr.

The same tiny run also shows what the MLflow UI is fed (experiment kind, dataset inputs, the
LoggedModel and the registry version made from it); ``test_mlflow_ui.py`` looks at the pages.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _tracking_support import ADMIN

from cocoseg import tracking
from cocoseg.utils import REDACTED, redact, secret_values

mlflow = pytest.importorskip("mlflow")


def test_redact_uri_credentials_env_secrets_and_nested_values(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE1234")
    monkeypatch.setenv("DB_PASSWORD", "hunter2-long")
    monkeypatch.setenv("SIGNING_KEY", "k3y-material")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to search for without blanking other text
    monkeypatch.setenv("NOT_SECRET", "tok-0123456789x")
    value = {"tracking": {"uri": "http://bob:pa55word@mlflow.example:5000/x"},
             "list": ["s3://bucket/AKIAEXAMPLE1234/k", ("DB hunter2-long", 3)], "n": 1.5,
             "tok-0123456789": "k3y-material", "plain": "http://mlflow.example:5000", "abc": "abc"}
    out = redact(value)
    assert out["tracking"]["uri"] == f"http://bob:{REDACTED}@mlflow.example:5000/x"
    assert out["list"] == [f"s3://bucket/{REDACTED}/k", (f"DB {REDACTED}", 3)] and out["n"] == 1.5
    assert out[REDACTED] == REDACTED  # keys too
    assert out["plain"] == "http://mlflow.example:5000" and out["abc"] == "abc"
    assert "hunter2-long" in secret_values() and "abc" not in secret_values()
    assert redact("x", extra=("x",)) == REDACTED


def test_credentials_leave_the_uri_for_mlflows_variables(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert tracking.split_credentials("http://u:p%40ss@h:5000/p") == ("http://h:5000/p", "u", "p@ss")
    assert tracking.split_credentials("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", "", "")
    assert tracking.adopt_credentials("https://alice:s3cr3t-pw@h/") == "https://h/"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr3t-pw"
    assert tracking.auth_env() == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cr3t-pw"}


def _files_holding(folder: Path, needle: bytes) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_password_is_nowhere(secret_demo, monkeypatch):
    server = secret_demo["server"]
    password = server["password"].encode()
    assert password not in secret_demo["stdout"].encode() and password not in secret_demo["stderr"].encode()
    # the demo's storage root (source, snapshot, run folder with Ray's checkpoints, exports) and the
    # server's folder (backend store, auth store, artifacts); its own config file holds it, of course
    hits = _files_holding(secret_demo["demo_root"], password)
    hits += [h for h in _files_holding(server["root"], password) if h != str(server["ini"])]
    assert hits == [], f"the password leaked into {hits}"
    # ... and the server really required it: the job's runs are there, finished.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server["password"])
    client = mlflow.MlflowClient(server["uri"])
    exp = client.get_experiment_by_name("secret-demo")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("variant")]
    assert runs and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["tracking.tracking_uri"] == "" or "@" not in runs[0].data.params["tracking.tracking_uri"]
