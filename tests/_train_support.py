"""Helpers shared by the training tests: a tiny synthetic snapshot and small-run overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

# Sizes keep every distributed test to seconds of compute: 64 px inputs, a few dozen images.
TINY = ["model.variant=n", "model.num_classes=4", "model.imgsz=64", "train.batch_size=8",
        "scaling.cpus_per_worker=0.5", "data.actors=1", "data.cpus_per_actor=0.5",
        "data.batch_rows=16", "scaling.threads_per_worker=1", "tracking.system_metrics_interval_s=2",
        "validation.cpus_per_actor=0.5", "validation.mode=blocking"]
# Tests of the asynchronous path (the default) say ``*ASYNC_VAL``; the others validate in-process:
# a Ray Data pool per validated epoch costs seconds more than the TINY epochs it validates.
ASYNC_VAL = ["validation.mode=async"]


def make_snapshot(root: Path, *, images: int = 48, val_fraction: float = 0.25, seed: int = 0,
                  size: tuple[int, int] = (96, 80)) -> str:
    """Synthetic shapes -> ingest (on the already running Ray) -> snapshot URI under ``root``."""
    from cocoseg.config import load_config
    from cocoseg.ingest.synthetic import write_synthetic_coco
    from pipelines import ingest

    src = root / "src"
    write_synthetic_coco(str(src), images=images, size=size, seed=seed, val_fraction=val_fraction, max_instances=3)
    manifest = ingest.run(load_config(None, [f"ingest.source={src}", f"storage.root={root}"])).manifest
    return manifest.snapshot_uri


@pytest.fixture(scope="session", name="tiny_snapshot")
def tiny_snapshot_fixture(ray_local, tmp_path_factory) -> str:
    """A 36 + 12 image synthetic snapshot (4 shape classes, 96 x 80 px), once per session."""
    return make_snapshot(tmp_path_factory.mktemp("snap"))
