"""What a person sees in the MLflow UI for the tiny demo run of ``_tracking_support`` (a real
training, export and registration against a real basic-auth ``mlflow server``), checked twice:
through the API (what the UI is fed) and in a real headless Chromium driven by selenium (what
it renders). Screenshots are saved under the test's temporary folder. The same run is searched
for the admin password (it was in the tracking URI): every byte of the run folder, the server's
stores and the job's output. Both read the one ``secret_demo`` run, so they share this module.

Chromium and its driver are Debian's ``chromium`` / ``chromium-driver``; the test installs them
with apt-get when they are missing and skips, saying why, only where that is impossible.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from _tracking_support import ADMIN

from cocoseg.tracking.ui import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MODEL_ID_TAG

mlflow = pytest.importorskip("mlflow")

MODEL = "cocoseg-yolov8-seg"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def fed(secret_demo, tmp_path_factory):
    """The training run, its LoggedModel and the champion version, read through the API."""
    server = secret_demo["server"]
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, server["password"]
    try:
        client = mlflow.MlflowClient(server["uri"], registry_uri=server["uri"])
        exp = client.get_experiment_by_name("secret-demo")
        run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("variant"))
        version = client.get_model_version_by_alias(MODEL, "champion")
        yield {"client": client, "exp": exp, "run": run, "version": version, **server}
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


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
def test_run_and_model_pages_show_dataset_logged_model_per_class_ap_and_aliases(fed, browser, tmp_path):
    run, version = fed["run"], fed["version"]
    host = fed["uri"].split("://", 1)[1]
    exp_id, run_id = run.info.experiment_id, run.info.run_id
    snapshot_digest = run.data.tags["snapshot_id"][:36]
    # The UI's fetch() refuses a page URL holding credentials, and a login cached from one such URL
    # does not reach its script and API requests: send the basic-auth header with every request.
    token = base64.b64encode(f"{ADMIN}:{fed['password']}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
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
