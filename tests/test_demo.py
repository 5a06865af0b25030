"""``make demo``'s job (``python -m pipelines.demo``) end to end, shortened, as a person runs it: a
subprocess with its own local Ray and MLflow on SQLite under the root, run once for this module.

- Its output must be short (one line per epoch, no Ray or pycocotools chatter), it must end with a
  ``champion``, and every hint of its closing summary must work exactly as printed: the MLflow UI,
  predict on an image, load the champion (without leaving a stray ``./mlflow.db``), serve it.
- What a person then sees in the MLflow UI that the hint starts, checked twice: through the API
  (what the UI is fed) and in a real headless Chromium driven by selenium (what it renders).
  Screenshots are saved under the test's temporary folder.

Chromium and its driver are Debian's ``chromium`` / ``chromium-driver``; the browser test installs
them with apt-get when they are missing and skips, saying why, only where that is impossible. The
password of a basic-auth server never landing anywhere is checked on the chaos test's run
(``tests/test_chaos.py``) and the registry's (``tests/test_registry_auth.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO, free_port, wait_http

from cocoseg.tracking.ui import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MODEL_ID_TAG

mlflow = pytest.importorskip("mlflow")

MAX_LINES = 60  # the bound for a clean run, progress bars excluded
OVERRIDES = ["train.epochs=1", "model.imgsz=64", "export.imgsz=64",
             "scaling.cpus_per_worker=0.5", "data.actors=1", "data.cpus_per_actor=0.5",
             "scaling.threads_per_worker=1", "tracking.system_metrics=false"]
MODEL = "cocoseg-yolov8-seg"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]


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


def _start_hint(command: str, url: str, cwd, timeout: float = 240) -> subprocess.Popen:
    """Start a printed server command in its own process group and wait for ``url`` (its log
    beside ``cwd``, which stays as a person's shell would leave it)."""
    log = cwd.parent / "hint-servers.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=_clean_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(url, timeout, proc, log)
    except BaseException:
        _stop_hint(proc)
        raise
    return proc


def _stop_hint(proc: subprocess.Popen) -> None:
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One shortened demo run: its root, output, the ports its hints use, and the hints."""
    home = tmp_path_factory.mktemp("demo")
    root = home / "root"
    ui_port, serve_port = free_port(), free_port()
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", "--root", str(root), "--images", "24",
                           "--ui-port", str(ui_port), "--serve-port", str(serve_port), *OVERRIDES],
                          capture_output=True, text=True, env=_clean_env(), cwd=home, timeout=2000)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    elsewhere = home / "elsewhere"  # a person's shell, anywhere
    elsewhere.mkdir()
    return {"root": root, "proc": proc, "out": out, "ui_port": ui_port, "serve_port": serve_port,
            "hints": _hints(proc.stdout), "uri": f"sqlite:///{root.resolve()}/mlflow.db", "elsewhere": elsewhere}


@pytest.fixture(scope="module")
def ui_server(demo):
    """The MLflow UI, started by the demo's own hint exactly as printed; its URL."""
    url = f"http://127.0.0.1:{demo['ui_port']}"
    proc = _start_hint(demo["hints"]["MLflow UI"], f"{url}/health", demo["elsewhere"])
    try:
        yield url
    finally:
        _stop_hint(proc)


@pytest.fixture(scope="module")
def fed(demo):
    """The training run, its LoggedModel and the champion version, read through the API."""
    client = mlflow.MlflowClient(demo["uri"], registry_uri=demo["uri"])
    run_id = re.search(r"^  mlflow_run_id\s+([0-9a-f]{32})$", demo["proc"].stdout, re.M).group(1)
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    version = client.get_model_version_by_alias(MODEL, "champion")
    return {"client": client, "exp": exp, "run": run, "version": version}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # minutes of compute on 2 shared cores; generous for loaded CI hosts
def test_demo_is_short_ends_with_a_champion_and_its_hints_work(demo, ui_server):
    root, proc, out, hints, elsewhere = demo["root"], demo["proc"], demo["out"], demo["hints"], demo["elsewhere"]
    lines = [line for line in out.splitlines() if line.strip() and not _is_progress_bar(line)]
    print(f"demo printed {len(lines)} lines (bound {MAX_LINES}):\n" + "\n".join(lines))
    # piped (not a terminal): no progress bar's redraws as lines of Ray-prefixed noise
    assert not [line for line in out.splitlines() if _is_progress_bar(line)], out[-3000:]
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    for noise in ("Reporting training result", "Execution plan", "Traceback", "tqdm is not installed",
                  "Average Precision", "DONE (t=", "config_checks"):  # the demo's own config draws no warning
        assert noise not in out, noise
    assert sum(line.startswith("epoch ") for line in lines) == 1  # one concise line per epoch

    champion = mlflow.MlflowClient(tracking_uri=demo["uri"], registry_uri=demo["uri"]).get_model_version_by_alias(
        MODEL, "champion")
    assert f"{MODEL} v{champion.version}" in proc.stdout
    assert set(hints) == {"MLflow UI", "predict", "load champion", "serve champion"}, hints
    # the MLflow UI hint: ui_server started it as printed and it answered /health

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

    port = demo["serve_port"]
    _stop_hint(_start_hint(hints["serve champion"], f"http://127.0.0.1:{port}/ping", elsewhere))
    _wait_closed(f"http://127.0.0.1:{port}/ping")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_ui_is_fed_a_model_training_run(fed):
    client, run, version = fed["client"], fed["run"], fed["version"]
    assert fed["exp"].tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"cocoseg-train", "cocoseg-val"}
    snapshot_id = run.data.tags["snapshot_id"]
    assert {d.dataset.digest for d in inputs.values()} == {snapshot_id[:36]}
    assert '"images": 19' in inputs["cocoseg-train"].dataset.profile  # 24 images, round(0.2 x 24) = 5 of them val
    model_id = run.data.tags[MODEL_ID_TAG]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run.info.run_id and str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert any(m.key == "val/mask_ap50_95" for m in model.metrics or [])  # metrics linked to the model
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    # the version names the training run's LoggedModel (its files are the serving package)
    assert version.tags["trained_model_id"] == model_id and version.tags["train_run_id"] == run.info.run_id
    assert version.run_id == run.info.run_id  # the training run's page lists the version ("Registered models")
    assert "champion" in version.aliases
    assert not any(k.startswith(("export.", "registry.")) for k in run.data.params)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/pr_curves.png", "plots/confusion_matrix.png", "plots/val_predictions.png"} <= plots, plots


def _chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths; installs Debian's packages when missing, else skips."""
    def found():
        return shutil.which("chromium"), shutil.which("chromedriver")

    if not all(found()) and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"], capture_output=True,
                       timeout=900, check=False)
    browser, driver = found()
    if not (browser and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed and apt-get could not install "
                    "them here (needs root and a package mirror)")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, url: str, wanted: list[str], shot, timeout: float = 120, expand: str = "") -> str:
    """Load ``url`` and wait until every string of ``wanted`` is in the page's text; screenshot.
    ``expand``: a folder of the artifact tree to click open, as a person would, while ``wanted`` is
    missing (the UI can leave a deep link's folder closed when its listing arrives after the route)."""
    from selenium.common.exceptions import WebDriverException

    driver.get(url)
    deadline = time.time() + timeout
    text, clicked = "", 0.0
    while time.time() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(w in text for w in wanted):
            break
        if expand and time.time() - clicked > 10:  # a click on an open folder closes it: the next reopens it
            nodes = driver.find_elements("xpath", f"//*[normalize-space(text())='{expand}']")
            try:
                if nodes:
                    nodes[0].click()
                    clicked = time.time()
            except WebDriverException:  # re-rendered under the click: the next round tries again
                pass
        time.sleep(1)
    driver.save_screenshot(str(shot))
    missing = [w for w in wanted if w not in text]
    assert not missing, f"{missing} not on {url} (screenshot {shot}); page text:\n{text[:3000]}"
    return text


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_run_and_model_pages_show_dataset_logged_model_per_class_ap_and_aliases(fed, ui_server, browser, tmp_path):
    # ui_server before browser: the browser quits first, so the UI's graceful shutdown has no open
    # keep-alive connection to wait for (it waited the full 20 s before its SIGKILL)
    run, version = fed["run"], fed["version"]
    host = ui_server.split("://", 1)[1]
    exp_id, run_id = run.info.experiment_id, run.info.run_id
    snapshot_digest = run.data.tags["snapshot_id"][:36]
    # MLflow 3.17's UI opens in its GenAI mode unless the browser chose otherwise (a toggle kept in
    # localStorage, default GenAI); ?workflowType=machine_learning selects the model-training mode
    # (docs/training.md, "MLflow"). The run page lists its dataset inputs, its LoggedModel
    # and the registry version made from it ("Registered models").
    text = _open(browser, f"http://{host}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning",
                 ["cocoseg-train", "yolov8n-seg", MODEL], tmp_path / "run.png")
    assert snapshot_digest[:8] in text or "cocoseg-val" in text
    _open(browser, f"http://{host}/#/experiments/{exp_id}/runs/{run_id}/artifacts", ["plots", "weights"],
          tmp_path / "run-artifacts.png")
    _open(browser, f"http://{host}/#/models/{MODEL}/versions/{version.version}", ["champion"],
          tmp_path / "version.png")
    _open(browser, f"http://{host}/#/models/{MODEL}", ["champion", f"Version {version.version}"],
          tmp_path / "model.png")
    per_class = [k for k in run.data.metrics if k.startswith("val/mask_ap50_95/")]
    assert per_class, f"no per-class AP metrics on the run; screenshots in {tmp_path}"
    browser.get(f"http://{host}/#/experiments/{exp_id}/runs/{run_id}/artifacts")
    _open(browser, f"http://{host}/#/experiments/{exp_id}/runs/{run_id}/artifacts/plots",
          ["per_class_ap_epoch", "pr_curves.png", "confusion_matrix.png"], tmp_path / "per-class.png", expand="plots")
