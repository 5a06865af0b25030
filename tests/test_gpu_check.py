"""The GPU check (tests/benchmarks/gpu_check.py): its CPU dry run runs every row, rows fail
independently, and the wheel folder is capped and unpacked without pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check  # noqa: E402


def _dry_run(tmp_path: Path, *extra: str) -> tuple[int, dict[str, dict], str]:
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--budget-s", "1500", "--wheels",
                           str(tmp_path / "no-wheels"), "--json", str(out), *extra],
                          capture_output=True, text=True, timeout=1700, env=env, cwd=REPO)
    rows = {r["name"]: r for r in json.loads(out.read_text())} if out.exists() else {}
    return proc.returncode, rows, proc.stdout + proc.stderr[-3000:]


@pytest.mark.slow  # ~31 s of CPU in all rows (measured at a load average of 37: 642 s wall)
@pytest.mark.timeout(1800)  # generous for loaded shared hosts
def test_cpu_dry_run_runs_every_row(tmp_path: Path) -> None:
    rc, rows, log = _dry_run(tmp_path)
    expected = {"pytest -m gpu", "train n b2", "ddp gloo 1 rank", "onnx export + ort parity", "train n b2 compile"}
    assert expected <= set(rows), log
    for name in expected:
        assert rows[name]["status"] == "ok", (name, rows[name], log)
    for name in ("train n b2", "ddp gloo 1 rank", "train n b2 compile"):
        assert rows[name]["images_per_s"] > 0 and rows[name]["peak_mem_gib"] > 0, rows[name]
    assert "| train n b2 compile | ok |" in log  # the one printed table
    # The reference row runs only where ultralytics is importable; otherwise it says why.
    ref = [r for n, r in rows.items() if n.startswith("reference")]
    assert ref and all(r["status"] in ("ok", "skip") and (r["status"] == "ok" or r["note"]) for r in ref), ref
    assert rc == 0, log


@pytest.mark.timeout(1800)
def test_a_failing_row_does_not_stop_the_others(tmp_path: Path) -> None:
    rc, rows, log = _dry_run(tmp_path, "--rows", "^(ddp|train n b2$)", "--break", "ddp gloo 1 rank")
    assert set(rows) == {"train n b2", "ddp gloo 1 rank"}, log
    assert rows["ddp gloo 1 rank"]["status"] == "FAIL" and "injected" in rows["ddp gloo 1 rank"]["note"]
    assert rows["train n b2"]["status"] == "ok", log
    assert rc == 1


def test_wheel_folder_over_the_cap_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "big-1.0-py3-none-any.whl").write_bytes(b"x" * 1_500_000)
    (tmp_path / "small-1.0-py3-none-any.whl").write_bytes(b"x" * 100_000)
    assert gpu_check.check_wheel_size(tmp_path, cap_mb=2.0) == pytest.approx(1.6)
    with pytest.raises(SystemExit, match=r"1\.6 MB > the 1 MB cap.*big-1\.0-py3-none-any\.whl 1\.5 MB"):
        gpu_check.check_wheel_size(tmp_path, cap_mb=1.0)
    with pytest.raises(SystemExit, match="no wheels"):
        gpu_check.check_wheel_size(tmp_path / "empty")


def test_wheels_are_unpacked_onto_the_path_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    with zipfile.ZipFile(tmp_path / "gpucheckdemo-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("gpucheckdemo/__init__.py", "VALUE = 41 + 1\n")
    site = gpu_check.unpack_wheels(tmp_path)
    assert site == tmp_path / "site" and sys.path[0] == str(site)
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(site)
    proc = subprocess.run([sys.executable, "-c", "import gpucheckdemo; print(gpucheckdemo.VALUE)"],
                          capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert proc.stdout.strip() == "42", proc.stderr
