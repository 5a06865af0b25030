"""``mlflow models serve`` on ``models:/NAME@champion`` answers a request carrying an encoded image
with boxes and masks (the pyfunc runs the ONNX with onnxruntime; no training stack needed)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
import uuid

import pytest
from conftest import BIN, free_port, stop, wait_http
from export_helpers import encoded_png, make_export

from cocoseg.registry import register_export


@pytest.mark.slow
def test_models_serve_answers_an_encoded_image(mlflow_server, tmp_path):
    name = f"seg-{uuid.uuid4().hex[:8]}"
    register_export(make_export(tmp_path / "exp", metric=0.3), name=name, tracking_uri=mlflow_server)
    port = free_port()
    # `mlflow models serve --env-manager local` execs uvicorn through bash: the venv's bin must be on PATH.
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    exe = BIN / "mlflow"
    cmd = [str(exe) if exe.exists() else "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 180, proc, log)
        image = base64.b64encode(encoded_png(96, 64, seed=3)).decode()
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]]},
                           "params": {"conf": 0.3, "max_det": 5}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())
    finally:
        stop(proc)
    (record,) = answer["predictions"]
    assert record["width"] == 96 and record["height"] == 64
    assert 0 < len(record["boxes_xyxy"]) <= 5
    assert len(record["masks_rle"]) == len(record["scores"]) == len(record["class_names"])
    assert all(sum(m["counts"]) == 96 * 64 for m in record["masks_rle"])
