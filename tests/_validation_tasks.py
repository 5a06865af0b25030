"""A scripted validation task for tests/test_engine_validation.py: a real Ray task with
``cocoseg.engine.validation.validate_staged``'s signature whose outcome per epoch (fitness returned,
or an error; with ``gate``, it first waits for ``<run>/gates/epoch-<e>``, which the test creates, so
the order in which results arrive is the test's, whatever the load) is read from
``<run>/script.json``; every attempt is recorded in ``<run>/attempts/epoch-<e>-<n>``. It checks
that it was handed the staged weights of its epoch."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from cocoseg.engine.checkpoint import check_complete


def scripted(cfg, snapshot_uri: str, weights: str, epoch: int, class_names: tuple[str, ...]) -> dict:
    run_dir = Path(weights).parent.parent
    script = json.loads((run_dir / "script.json").read_text())[str(epoch)]
    (run_dir / "attempts").mkdir(exist_ok=True)
    (run_dir / "attempts" / f"epoch-{epoch}-{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))
    staged = int(check_complete(weights)["epoch"])
    if staged != epoch:
        raise AssertionError(f"the task of epoch {epoch} got the weights of epoch {staged}")
    deadline = time.time() + 600
    while script.get("gate") and not (run_dir / "gates" / f"epoch-{epoch}").exists() and time.time() < deadline:
        time.sleep(0.05)
    if "error" in script:
        raise RuntimeError(script["error"])
    curves = {"epoch": epoch, "pr50": {}, "confusion": {}}
    return {"metrics": {"val/mask_ap50_95": script["fitness"], "val/box_ap50_95": script["fitness"] / 2},
            "plots": {"preview": f"png of epoch {epoch}".encode(), "curves": curves}, "scorer": "scripted"}
