"""`cocoseg synth` / `cocoseg ingest` as real subprocesses: atomicity under SIGKILL, reruns, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cocoseg.cli import main as cli_main
from cocoseg.config import load_config
from cocoseg.data.schema import MANIFEST_NAME, QUARANTINE_NAME, SnapshotError, list_snapshots, read_manifest
from cocoseg.ingest.synthetic import write_synthetic_coco
from pipelines.ingest import run

REPO = Path(__file__).resolve().parents[1]


def _env(ray_address: str = "local") -> dict[str, str]:
    # "local": a private Ray per process, never another session's `ray start` cluster
    return {**os.environ, "RAY_ADDRESS": ray_address,
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _cocoseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "cocoseg", *map(str, args)]


@pytest.mark.slow
def test_killed_ingest_leaves_no_snapshot_and_rerun_completes(ray_local, tmp_path, capsys):
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_synthetic_coco(str(src), images=300, size=(64, 48), seed=2)
    args = ("ingest", src, dest, "ingest.shard_bytes=1024")
    log = open(tmp_path / "run1.log", "wb")
    # The killed job joins the session's Ray as a second driver: SIGKILL ends that driver (as a
    # crashed `ray job` would end), and no second cold Ray start is paid on a 2-core machine.
    env = _env(ray_local.get_runtime_context().gcs_address)
    proc = subprocess.Popen(_cocoseg(*args), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    killed = False
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if any((dest / "snapshots").glob("*/train/part-*.parquet")):
                os.killpg(proc.pid, signal.SIGKILL)  # mid-write: shards exist, the manifest not yet
                killed = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()
    assert killed, "ingest finished before it could be killed:\n" + (tmp_path / "run1.log").read_text()[-3000:]
    partial = next((dest / "snapshots").iterdir())
    assert not (partial / MANIFEST_NAME).exists()
    assert list_snapshots(str(dest)) == []  # the partial folder is invisible to readers
    with pytest.raises(SnapshotError, match="did not finish"):
        read_manifest(str(partial))

    (partial / "train" / "part-99999.parquet").write_bytes(b"stray")  # must not survive the rerun
    # the rerun in-process, on the session's warm Ray (a second cold Ray start costs ~30 s on CI)
    run(load_config(None, [f"ingest.source={src}", f"ingest.dest={dest}", *args[3:]]))
    [manifest] = list_snapshots(str(dest))
    assert manifest.snapshot_id == partial.name
    assert manifest.counts["images_written"] == 300
    listed = {MANIFEST_NAME, QUARANTINE_NAME} | {s.path for sp in manifest.splits.values() for s in sp.shards}
    on_disk = {str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file()}
    assert on_disk == listed  # nothing left over from the killed run

    assert cli_main(list(map(str, args))) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    proc = subprocess.run(_cocoseg("ingest", tmp_path / "absent", tmp_path / "dest"), capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert "no files under" in proc.stderr and "Traceback" not in proc.stderr
    assert cli_main(["ingest", str(tmp_path), str(tmp_path / "dest"), "ingest.shard_byte=5"]) == 2
    assert "Did you mean 'shard_bytes'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["synth", str(tmp_path / "s"), "--size", "12by3"])
    assert exc.value.code == 2 and "WIDTHxHEIGHT" in capsys.readouterr().err
    assert cli_main(["synth", str(tmp_path / "s"), "--images", "3", "--size", "40x32"]) == 0
    assert '"train": 2' in capsys.readouterr().out
