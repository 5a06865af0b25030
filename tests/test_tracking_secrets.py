"""Secrets never leave: the one redaction function and how credentials leave the tracking URI.

Jobs against a real basic-auth ``mlflow server`` with the password in the tracking URI, searched
for in every byte they wrote, are ``test_chaos.py`` (a training run killed three times and resumed:
its run folder, Ray's checkpoints, the drivers' output, the server's stores) and
``test_registry_auth.py`` (a registration: the output, the export, the server's stores).
"""

from __future__ import annotations

import os

import pytest

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
