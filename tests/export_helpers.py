"""Test helpers for the export and registry tests (not a test module).

``TinySeg`` is a stand-in with the forward contract of ``cocoseg.model`` (``RawOutputs``: per
level (B, 64 + nc, H/s, W/s) maps for s = 8, 16, 32, (B, 32, A) mask coefficients, proto
(B, 32, H/4, W/4)), small enough to export, check and serve in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from cocoseg.config import ExportConfig
from cocoseg.export import export_bundle
from cocoseg.structures import RawOutputs


class TinySeg(nn.Module):
    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.nc = num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.SiLU())  # stride 4: the proto level
        self.down = nn.ModuleList(nn.Conv2d(8, 8, 3, 2, 1) for _ in range(3))  # strides 8, 16, 32
        self.head = nn.Conv2d(8, 64 + num_classes, 1)  # DFL box logits (4 sides x 16 bins), classes
        self.coeffs = nn.Conv2d(8, 32, 1)
        self.proto = nn.Conv2d(8, 32, 1)

    def forward(self, x: torch.Tensor) -> RawOutputs:
        f = self.stem(x)
        protos = self.proto(f)
        maps, coeffs = [], []
        for conv in self.down:
            f = conv(f)
            maps.append(self.head(f))
            coeffs.append(self.coeffs(f).flatten(2))  # (B, 32, h*w)
        return RawOutputs(maps, torch.cat(coeffs, 2), protos)


def save_weights(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_export(root: Path, *, metric: float | None = 0.3, snapshot: str = "snap-val-1", seed: int = 0,
                imgsz: int = 64, extra_metrics: dict | None = None, **cfg_kw) -> Path:
    """A complete export directory for TinySeg with the given mask AP50-95."""
    root.mkdir(parents=True, exist_ok=True)
    model = TinySeg(seed=seed).eval()
    weights = save_weights(model, root.parent / f"{root.name}.safetensors")
    card = {"variant": "tiny", "num_classes": 3, "class_names": ["a", "b", "c"], "imgsz": imgsz,
            "data_snapshot": "snap-train-1", "train_run_id": "run-123", "git_commit": "abc123"}
    metrics = {"val_snapshot": snapshot, **({"val/mask_ap50_95": metric, "val/box_ap50_95": metric + 0.1}
                                            if metric is not None else {}), **(extra_metrics or {})}
    cfg = ExportConfig(imgsz=imgsz, bench=False, **cfg_kw)
    export_bundle(model, weights_file=weights, card=card, out_dir=root, cfg=cfg, num_classes=3,
                  metrics=metrics, resolved_config={"export": {"imgsz": imgsz}})
    return root


def encoded_png(width: int = 80, height: int = 48, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def read_card(root: Path) -> dict:
    return json.loads((root / "model_card.json").read_text())


def detecting_checkpoint(dest: Path, *, class_names: list[str], imgsz: int = 64, **card: object) -> str:
    """An n-variant checkpoint at ``dest`` whose class logits are pushed up (biases 0.5, -1, -2, 1),
    so a random-weight model still detects things; ``card`` adds ModelCard fields."""
    from cocoseg.model import ModelCard, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("n", len(class_names))
    with torch.no_grad():
        for branch in model.head.cv3:
            branch[-1].bias[:] = torch.tensor([0.5, -1.0, -2.0, 1.0])
    save_checkpoint(str(dest), model.eval(), ModelCard(variant="n", num_classes=len(class_names),
                                                       class_names=list(class_names), imgsz=imgsz, **card))
    return str(dest)


def serve_and_predict(model_uri: str, tracking_uri: str, encoded: bytes, cwd: Path, **params: object) -> dict:
    """``mlflow models serve -m MODEL_URI`` on a free loopback port, one base64 image posted to
    ``/invocations`` with ``params``; returns the answer's JSON. The server is stopped either way."""
    import base64
    import os
    import subprocess
    import urllib.request

    from conftest import BIN, free_port, stop, wait_http

    port = free_port()
    # `mlflow models serve --env-manager local` execs uvicorn through bash: the venv's bin must be on PATH.
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    exe = BIN / "mlflow"
    cmd = [str(exe) if exe.exists() else "mlflow", "models", "serve", "-m", model_uri,
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = cwd / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 180, proc, log)
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(encoded).decode()]]},
                           "params": params}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())
    finally:
        stop(proc)
