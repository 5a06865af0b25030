"""The production set-up: ``mlflow server --app-name basic-auth`` refuses unauthenticated and
wrongly authenticated requests with a clear error and nothing registered; valid credentials work."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid

import pytest
from _tracking_support import ADMIN, password_leaks, secret_uri
from export_helpers import make_export

from cocoseg.registry import CHAMPION, alias_version, connect, register_export
from cocoseg.registry.client import FLUENT_ENV


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("auth-export") / "exp", metric=0.3)


def test_unauthenticated_request_is_refused(auth_server):
    uri = auth_server["uri"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/search?max_results=1", timeout=10)
    assert err.value.code == 401


def test_register_without_or_with_wrong_credentials_fails_cleanly(auth_server, export_dir, capsys, monkeypatch):
    from cocoseg.cli import main

    uri, password = auth_server["uri"], auth_server["password"]
    fluent_env = {k: os.environ.get(k) for k in FLUENT_ENV}
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

    # The password inside the tracking URI, as a person pastes it: registered, and then nowhere, in
    # the output, the export or the server's stores (its own config file aside). The training side
    # of the same check is the chaos test's (tests/test_chaos.py).
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert main(["register", str(export_dir), f"tracking.tracking_uri={secret_uri(auth_server)}", "--name",
                 f"{name}-uri"]) == 0
    printed = capsys.readouterr()
    assert password not in printed.out + printed.err
    leaked = password_leaks(auth_server, export_dir)
    assert leaked == [], f"the password leaked into {leaked}"
    version = connect(uri).get_model_version(f"{name}-uri", "1")
    assert password not in f"{version.source} {version.tags} {version.run_id}"
    # Registering in process leaves the process as it was: MLflow's fluent setters export the URI and
    # the experiment into os.environ, where every later subprocess (here: the rest of this test
    # session) would inherit this server, password and all.
    assert {k: os.environ.get(k) for k in fluent_env} == fluent_env
