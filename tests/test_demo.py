"""``make demo``'s job (``python -m pipelines.demo``) end to end, shortened, as a person runs it: a
subprocess with its own local Ray and MLflow on SQLite under the root. Its output must be short
(one line per epoch, no Ray or pycocotools chatter), it must end with a ``champion``, and every
hint of its closing summary must work exactly as printed: the MLflow UI, predict on an image,
load the champion (without leaving a stray ``./mlflow.db``), serve the champion."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO, free_port, wait_http

mlflow = pytest.importorskip("mlflow")

MAX_LINES = 60  # the bound for a clean run, progress bars excluded
OVERRIDES = ["train.epochs=2", "model.imgsz=64", "export.imgsz=64",
             "scaling.cpus_per_worker=0.5", "data.actors=1", "data.cpus_per_actor=0.5",
             "scaling.threads_per_worker=1", "tracking.system_metrics=false"]


def _is_progress_bar(line: str) -> bool:
    return "\r" in line or "%|" in line or " batch/s" in line or "batch/s]" in line


def _hints(out: str) -> dict[str, str]:
    lines = out.splitlines()
    start = lines.index("next:")
    return {line[2:17].strip(): line[17:].strip() for line in lines[start + 1:] if line.startswith("  ")}


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "COCOSEG_VERBOSE"))}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _serve(command: str, url: str, cwd, timeout: float = 240) -> None:
    """Start a printed server command in its own process group, wait for ``url``, stop it."""
    log = cwd / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=_clean_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(url, timeout, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_closed(url: str, timeout: float = 60) -> None:
    """The stopped server's port stops answering (its workers shut down gracefully after SIGTERM)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 (loopback only)
        except OSError:
            return
        time.sleep(0.5)
    raise AssertionError(f"{url} still answers {timeout:.0f} s after its server was stopped")


@pytest.mark.slow
@pytest.mark.timeout(2400)  # minutes of compute on 2 shared cores; generous for loaded CI hosts
def test_demo_is_short_ends_with_a_champion_and_its_hints_work(tmp_path):
    root = tmp_path / "root"
    ui_port, serve_port = free_port(), free_port()
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", "--root", str(root), "--images", "24",
                           "--ui-port", str(ui_port), "--serve-port", str(serve_port), *OVERRIDES],
                          capture_output=True, text=True, env=_clean_env(), cwd=tmp_path, timeout=2000)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    lines = [line for line in out.splitlines() if line.strip() and not _is_progress_bar(line)]
    print(f"demo printed {len(lines)} lines (bound {MAX_LINES}):\n" + "\n".join(lines))
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    for noise in ("Reporting training result", "Execution plan", "Traceback", "tqdm is not installed",
                  "Average Precision", "DONE (t=", "config_checks"):  # the demo's own config draws no warning
        assert noise not in out, noise
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one concise line per epoch

    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    champion = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "cocoseg-yolov8-seg", "champion")
    assert f"cocoseg-yolov8-seg v{champion.version}" in proc.stdout
    hints = _hints(proc.stdout)
    assert set(hints) == {"MLflow UI", "predict", "load champion", "serve champion"}, hints

    elsewhere = tmp_path / "elsewhere"  # a person's shell, anywhere
    elsewhere.mkdir()
    loaded = subprocess.run(["bash", "-c", hints["load champion"]], cwd=elsewhere, env=_clean_env(),
                            capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    # the model's id: an MLflow 3 LoggedModel id (m-<32 hex>)
    assert re.fullmatch(r"loaded (m-)?[0-9a-f]{32}", loaded.stdout.strip()), loaded.stdout
    assert list(elsewhere.iterdir()) == [], "the hint left files behind (a stray mlflow.db?)"

    predicted = subprocess.run(["bash", "-c", hints["predict"]], cwd=elsewhere, env=_clean_env(),
                               capture_output=True, text=True, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert any(p.suffix == ".png" for p in (root / "predictions").iterdir())

    _serve(hints["MLflow UI"], f"http://127.0.0.1:{ui_port}/health", elsewhere)
    _serve(hints["serve champion"], f"http://127.0.0.1:{serve_port}/ping", elsewhere)
    _wait_closed(f"http://127.0.0.1:{serve_port}/ping")
