"""The Ray Data input stage on a real local Ray: snapshot Parquet (local folder and S3) in,
collated TrainBatch / ValBatch out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from augment_rows import make_rows, write_split

from cocoseg import storage
from cocoseg.data.collate import ValBatch, collate_val
from cocoseg.structures import TrainBatch

# Each test starts a Ray Data execution (actor start-up included): 3-18 s per test measured on
# the shared 2-core machine (load average ~30), the first one paying Ray Data's one-off warm-up.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    rows = make_rows(24, (120, 90), instances=2)
    return write_split(rows, tmp_path_factory.mktemp("snapshot") / "train", rows_per_file=8)


def _check_train_batches(batches: list[TrainBatch], imgsz: int, expect_ids: set[int]) -> None:
    seen = []
    for tb in batches:
        b = tb.images.shape[0]
        assert tb.images.shape == (b, 3, imgsz, imgsz) and tb.images.dtype == torch.uint8
        t = tb.targets
        assert t.masks.shape == (b, imgsz // 4, imgsz // 4) and t.masks.dtype == torch.int32
        for i in range(b):  # map values index the image's rows (a tiny instance may cover no cell)
            assert int(t.masks[i].max()) <= int((t.batch_idx == i).sum())
        assert int((t.masks > 0).sum()) > 0
        assert bool((t.cls >= 0).all()) and bool((t.cls < 4).all())
        seen += tb.image_ids.tolist()
    assert sorted(seen) == sorted(expect_ids)  # every row exactly once (mosaic keeps the current id)


def test_val_stage_keeps_letterbox_params(ray_local, split: list[str]) -> None:
    from pipelines._data import build_val_dataset, iter_collated

    batches = list(iter_collated(build_val_dataset(split, imgsz=64, batch_size=8), batch_size=8,
                                 collate=collate_val))
    assert all(isinstance(vb, ValBatch) for vb in batches)
    ids = sorted(i for vb in batches for i in vb.image_ids.tolist())
    assert ids == list(range(1, 25))
    gains = torch.cat([vb.gains for vb in batches])
    assert torch.allclose(gains, torch.full_like(gains, 64 / 120))
    assert all(vb.orig_hw.tolist() == [[90, 120]] * len(vb.image_ids) for vb in batches)


def test_train_stage_streams_snapshot_from_s3(ray_local, s3_bucket: str, split: list[str]) -> None:
    """Snapshot shards on a real S3 protocol server -> Ray Data actors -> collated TrainBatches."""
    from pipelines._data import build_train_dataset, iter_collated

    client = storage.s3_client()
    bucket = s3_bucket.removeprefix("s3://")
    for path in split:
        client.upload_file(path, bucket, f"snapshots/s1/train/{Path(path).name}")
    ds = build_train_dataset(f"{s3_bucket}/snapshots/s1/train/", preset="yolov8", imgsz=64, seed=1,
                             batch_size=8, concurrency=1, buffer_size=16)
    batches = list(iter_collated(ds, batch_size=6))
    _check_train_batches(batches, 64, set(range(1, 25)))
    assert max(int((tb.targets.batch_idx == 0).sum()) for tb in batches) > 2  # mosaic brought partners
