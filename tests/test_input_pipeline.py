"""The training input stage on a real local Ray: snapshot Parquet (local folder and S3) in,
augmented rows out of the persistent input actors, every image once per epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
from augment_rows import make_rows, write_split

from cocoseg import storage

# The tests start small pools of input actors.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    rows = make_rows(24, (120, 90), instances=2)
    return write_split(rows, tmp_path_factory.mktemp("snapshot") / "train", rows_per_file=8)


def _epoch_ids(stream, epoch: int, batch: int) -> dict[int, tuple[bytes, bytes]]:
    out = {}
    for rows in stream.epoch(epoch, batch_size=batch):
        assert len(rows["image_id"]) <= batch
        for k, i in enumerate(rows["image_id"]):
            assert int(i) not in out  # once per epoch
            out[int(i)] = (rows["image"][k].tobytes(), rows["labels"][k])
    return out


def test_train_input_streams_epochs_from_s3(ray_local, s3_bucket: str, split: list[str]) -> None:
    """Snapshot shards on a real S3 protocol server -> the persistent input actors -> per-rank
    epochs: every row once per epoch across the two ranks, in equal parts; close-mosaic in the
    last epoch (per preset_for_epoch); the same epoch reproduced by a second pool; epochs differ."""
    from cocoseg.data.train_input import TrainInput

    client = storage.s3_client()
    bucket = s3_bucket.removeprefix("s3://")
    uris = []
    for path in split:
        client.upload_file(path, bucket, f"snapshots/s1/train/{Path(path).name}")
        uris.append(f"{s3_bucket}/snapshots/s1/train/{Path(path).name}")
    shards = [(u, 8) for u in uris]
    inputs = TrainInput.start(shards, augment="yolov8", epochs=3, close_mosaic=1, imgsz=64, num_classes=4,
                              seed=7, actors=1, cpus_per_actor=0.5, chunk_rows=4)
    try:
        assert [inputs.preset(e) for e in range(3)] == ["yolov8", "yolov8", "yolov8-close"]
        streams = [inputs.for_worker(r, 2) for r in range(2)]
        epochs = [[_epoch_ids(s, e, batch=3) for s in streams] for e in range(3)]
    finally:
        inputs.stop()
    for per_rank in epochs:
        assert len(per_rank[0]) == len(per_rank[1]) == 12
        assert sorted([*per_rank[0], *per_rank[1]]) == list(range(1, 25))
    instances = [[len(v[1]) // 20 for r in per_rank for v in r.values()] for per_rank in epochs]
    assert max(instances[0]) > 2 and max(instances[2]) <= 2  # mosaic brings partners; closed: one image
    assert epochs[0][0] != epochs[1][0]
    again = TrainInput.start(shards, augment="yolov8", epochs=3, close_mosaic=1, imgsz=64, num_classes=4,
                             seed=7, actors=2, cpus_per_actor=0.5, chunk_rows=4)
    try:  # a fresh pool, another actor count, epoch 1 first (as after a resume)
        assert _epoch_ids(again.for_worker(1, 2), 1, batch=5) == epochs[1][1]
    finally:
        again.stop()
