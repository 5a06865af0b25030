"""MLflow tracking against a real ``mlflow server``: run layout, exactly-once epochs, outages.

An outage is made real with a small TCP relay between the logger and the server: closing the
relay makes the server unreachable (connection refused), reopening it on the same port brings
it back. The relay is test plumbing; the logger and MLflow are the real ones.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from cocoseg import tracking

mlflow = pytest.importorskip("mlflow")


class Relay:
    """Forward 127.0.0.1:<port> to a target port until closed; can reopen on the same port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def open(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(16)
        self.port = srv.getsockname()[1]
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
            except OSError:
                pass
            self._server.close()
            self._server = None
        for conn in self._conns:  # kept-alive client connections die with the "server"
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(autouse=True)
def fast_fail(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = mlflow.tracking.MlflowClient(uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_run_is_nested_tagged_and_holds_each_epoch_once(mlflow_server, tmp_path):
    client = mlflow.tracking.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("t-track") or client.get_experiment(client.create_experiment("t-track"))
    parent = client.create_run(exp.experiment_id).info.run_id
    run_id = tracking.create_run(tracking_uri=mlflow_server, experiment="t-track", run_name="r1",
                                 params={"train": {"lr0": 0.01, "epochs": 3}, "model": {"variant": "n"}},
                                 tags={"snapshot": "s1", "variant": "n"}, parent_run_id=parent)
    run = client.get_run(run_id)
    assert run.data.params == {"train.lr0": "0.01", "train.epochs": "3", "model.variant": "n"}
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["snapshot"] == "s1"

    journal = tracking.journal_uri(str(tmp_path / "run"))
    logger = tracking.RunLogger(tracking_uri=mlflow_server, run_id=run_id, journal=journal, system_metrics=False)
    for epoch in range(2):
        logger.log_epoch(epoch, {"train/loss": 1.0 / (epoch + 1)})
    assert logger.close()
    # A restarted worker re-trains epoch 1 (its checkpoint was lost) and goes on with epoch 2.
    again = tracking.RunLogger(tracking_uri=mlflow_server, run_id=run_id, journal=journal, system_metrics=False)
    again.log_epoch(1, {"train/loss": 0.45})
    again.log_epoch(2, {"train/loss": 0.3})
    assert again.close()
    assert _history(mlflow_server, run_id, "train/loss") == [(0, 1.0), (1, 0.5), (2, 0.3)]
    assert [r["step"] for r in tracking.read_journal(journal)] == [0, 1, 2]


def test_outage_mid_run_loses_nothing_and_warns_once(mlflow_server, tmp_path, caplog):
    relay = Relay(int(mlflow_server.rsplit(":", 1)[1]))
    relay.open()
    uri = f"http://127.0.0.1:{relay.port}"
    run_id = tracking.create_run(tracking_uri=uri, experiment="t-outage", run_name="r", params={}, tags={})
    journal = tracking.journal_uri(str(tmp_path / "run"))
    logger = tracking.RunLogger(tracking_uri=uri, run_id=run_id, journal=journal, system_metrics=True,
                                system_metrics_interval=0.2)
    logger.log_epoch(0, {"val/mask_ap50": 0.1})
    relay.close()
    caplog.set_level(logging.WARNING, logger="cocoseg")
    for epoch in (1, 2):
        logger.log_epoch(epoch, {"val/mask_ap50": 0.1 * (epoch + 1)})
        time.sleep(0.5)  # the system-metrics thread meets the outage too
    assert logger.offline
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "cocoseg sync-mlflow" in warnings[0].getMessage()
    assert _history(mlflow_server, run_id, "val/mask_ap50") == [(0, pytest.approx(0.1))]
    relay.open()  # same port: the server is back
    logger.log_epoch(3, {"val/mask_ap50": 0.4})
    assert not logger.offline
    assert [s for s, _ in _history(mlflow_server, run_id, "val/mask_ap50")] == [0, 1, 2, 3]
    # system metrics flow again after the outage (mlflow's own thread gave up during it)
    back = time.time() * 1000
    deadline = time.time() + 20
    while time.time() < deadline and not _system_samples_after(mlflow_server, run_id, back):
        time.sleep(0.5)
    assert _system_samples_after(mlflow_server, run_id, back), "system metrics stopped after the outage"
    logger.close()
    relay.close()


def _system_samples_after(uri: str, run_id: str, ms: float) -> bool:
    client = mlflow.tracking.MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("system/")]
    return any(m.timestamp >= ms for k in keys for m in client.get_metric_history(run_id, k))


def test_sync_replays_a_journal_written_while_offline(mlflow_server, tmp_path, cli):
    run_id = tracking.create_run(tracking_uri=mlflow_server, experiment="t-sync", run_name="r", params={}, tags={})
    run_dir = tmp_path / "run"
    journal = tracking.journal_uri(str(run_dir))
    dead = f"http://127.0.0.1:{_closed_port()}"
    logger = tracking.RunLogger(tracking_uri=dead, run_id=run_id, journal=journal, system_metrics=False)
    for epoch in range(3):
        logger.log_epoch(epoch, {"train/loss": 3.0 - epoch})
    assert not logger.close()
    assert _history(mlflow_server, run_id, "train/loss") == []
    out = cli("sync-mlflow", str(run_dir), "--tracking-uri", mlflow_server)
    assert "sent 3 epoch(s), 0 already present" in out.stdout
    out = cli("sync-mlflow", str(run_dir), "--tracking-uri", mlflow_server)
    assert "sent 0 epoch(s), 3 already present" in out.stdout
    assert _history(mlflow_server, run_id, "train/loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_sync_of_a_missing_run_dir_is_a_clear_error(tmp_path, cli):
    out = cli("sync-mlflow", str(tmp_path / "nope"), check=False)
    assert out.returncode == 2
    assert "no metrics journal" in out.stderr and "nope" in out.stderr


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri("http://x:5000", str(tmp_path)) == "http://x:5000"
    assert tracking.resolve_tracking_uri("", str(tmp_path)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_tracking_uri("", str(tmp_path)) == "http://env:5000"


def test_an_s3_root_without_tracking_uri_resolves_to_one_store_from_any_directory(monkeypatch, tmp_path):
    """Not ``<cwd>/.cocoseg`` (each ``ray job submit`` driver has its own working directory) and
    never a folder named ``s3:``: ``$COCOSEG_HOME/mlflow.db``, else ``~/.cocoseg/mlflow.db``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COCOSEG_HOME", str(tmp_path / "home"))
    seen = set()
    for cwd in (tmp_path / "a", tmp_path / "b"):
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        seen.add(tracking.resolve_tracking_uri("", "s3://bucket/x"))
    assert seen == {f"sqlite:///{(tmp_path / 'home').resolve()}/mlflow.db"}
    monkeypatch.delenv("COCOSEG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert tracking.resolve_tracking_uri("", "s3://bucket/x") == f"sqlite:///{(tmp_path / 'user').resolve()}/.cocoseg/mlflow.db"
    assert not any(p.name.startswith("s3") for p in tmp_path.rglob("*"))


def test_curves_are_drawn_from_the_journal(tmp_path):
    records = [{"step": e, "metrics": {"train/loss_box": 1.0 / (e + 1), "val/mask_ap50": 0.2 * e,
                                       "lr/weight": 0.01}} for e in range(3)]
    paths = tracking.plot_curves(records, tmp_path)
    assert sorted(p.name for p in paths) == ["losses.png", "lr.png", "metrics.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def test_a_lost_dataset_insert_race_is_retried_and_other_errors_are_not(monkeypatch):
    """Tune starts trials of one snapshot at the same moment: each run logs the same dataset
    (name, digest), and the server's store lets one of two racing inserts in; the other request
    fails with the store's unique-constraint error (CI stop 30 lost a trial to it, message below).
    That error is retried and the run gets its inputs; any other error is raised at once. The
    client here stands in for the server's answers (the race itself cannot be forced from outside)."""
    from mlflow.exceptions import MlflowException

    from cocoseg.tracking import ui

    monkeypatch.setattr(ui.time, "sleep", lambda s: None)
    lost = ("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
            "datasets.name, datasets.digest")

    class Server:
        def __init__(self, answers):
            self.answers, self.calls = list(answers), []

        def log_inputs(self, run_id, datasets):
            self.calls.append((run_id, [d.dataset.digest for d in datasets]))
            answer = self.answers.pop(0)
            if answer is not None:
                raise MlflowException(answer)

    inputs = [{"name": "cocoseg-train", "digest": "d" * 36, "source_type": "local", "source": "{}",
               "schema": "{}", "profile": "{}", "context": "train"}]
    server = Server([lost, None])
    ui.log_dataset_inputs(server, "run1", inputs)
    assert server.calls == [("run1", ["d" * 36])] * 2
    server = Server([lost, lost, lost])
    with pytest.raises(MlflowException, match="UNIQUE constraint"):  # a store that keeps refusing: not hidden
        ui.log_dataset_inputs(server, "run1", inputs)
    assert len(server.calls) == 3
    server = Server(["PERMISSION_DENIED: no"])
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        ui.log_dataset_inputs(server, "run1", inputs)
    assert len(server.calls) == 1
    ui.log_dataset_inputs(Server([]), "run1", [])  # nothing to log: no call
