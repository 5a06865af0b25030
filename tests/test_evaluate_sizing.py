"""Issue 27 cases 5 and 6 through the real ``cocoseg evaluate``, each on its own private local Ray
(no RAY_ADDRESS): the settings that hung (``evaluate.actors=2``; ``evaluate.cpus_per_actor=2``)
now finish, a pool the machine cannot hold beside the reads is refused in one line with the
largest setting that fits, and the default pool uses every core (actors x threads). The pool
arithmetic itself has fast tests in tests/test_config_checks.py; these runs are ``extended``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, tiny_snapshot: str) -> str:
    from export_helpers import detecting_checkpoint

    from cocoseg.data.schema import read_manifest

    manifest = read_manifest(tiny_snapshot)
    return detecting_checkpoint(tmp_path_factory.mktemp("weights") / "w", class_names=list(manifest.class_names),
                                data_snapshot=manifest.snapshot_id)


def _evaluate(weights: str, snapshot: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "cocoseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cocoseg"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each run: its own local Ray
    return subprocess.run([*cmd, "evaluate", weights, snapshot, *overrides, "evaluate.batch_size=4", "--out", str(out),
                           "--no-mlflow"], capture_output=True, text=True, timeout=600, env=env, cwd=out.parent)


@pytest.mark.slow
@pytest.mark.extended  # fast cover: test_config_checks.py::test_pool_that_would_wait_forever_is_refused_with_what_fits
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("override", ["evaluate.actors=2", "evaluate.cpus_per_actor=2", ""])
def test_issue_case5_6_settings_that_hung_finish_and_the_default_uses_every_core(override, weights, tiny_snapshot,
                                                                                   tmp_path):
    out = _evaluate(weights, tiny_snapshot, tmp_path / "eval", *([override] if override else []))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "images of" in out.stdout and (tmp_path / "eval" / "metrics.json").exists()
    if not override:  # the default pool: every core busy with the model
        cores = os.cpu_count() or 1
        found = re.search(r"evaluate: (\d+) actor\(s\) x [\d.]+ CPU, (\d+) thread\(s\) each", out.stderr)
        assert found, out.stderr[-3000:]
        assert int(found[1]) * int(found[2]) == cores, found[0]


@pytest.mark.slow
@pytest.mark.extended  # fast cover: test_config_checks.py::test_pool_that_would_wait_forever_is_refused_with_what_fits
@pytest.mark.timeout(600)
def test_issue_case5_a_pool_without_room_for_the_reads_is_refused_in_one_line(weights, tiny_snapshot, tmp_path):
    cores = os.cpu_count() or 1
    out = _evaluate(weights, tiny_snapshot, tmp_path / "eval", f"evaluate.actors={cores + 1}")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert f"set evaluate.actors={cores}" in lines[0] and "the reads would never run" in lines[0], lines
