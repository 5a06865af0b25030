"""Memory that must not grow with the dataset (issue 15): the validating rank streams the val split.

The split is written the way ingest writes it (``plan_shards`` + ``write_shard`` +
``SnapshotWriter``; no Ray needed), with COCO-sized JPEGs in many small shards. Arrow's allocator
(``pyarrow.total_allocated_bytes``) counts every byte a Parquet read holds, so the test sees what
``build_val_batches`` keeps while it is built and while it is iterated: before the fix it held the
whole split's encoded images (5 MB here), now about one shard's row group (0.4 MB) a few times over.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from cocoseg.config import load_config
from cocoseg.data.schema import iter_split_batches, read_manifest
from cocoseg.data.stage import INPUT_COLUMNS, ChunkAugmenter
from cocoseg.engine.build import build_val_batches
from cocoseg.ingest import snapshot as snapshot_module
from cocoseg.ingest.snapshot import (
    SnapshotWriter,
    compute_snapshot_id,
    plan_shards,
    sort_records,
    write_shard,
)
from cocoseg.ingest.source import plan_source
from cocoseg.ingest.synthetic import write_coco_like

SHARD_BYTES = 400_000  # ~3 COCO-sized images per shard: many shards, each far smaller than the split


def _snapshot(root, source: str, shard_bytes: int) -> str:
    """Ingest ``source`` as the ingest job does, minus Ray (one shard task after the other)."""
    plan = plan_source(source)
    settings = {"shard_bytes": shard_bytes, "box_tolerance_px": 2.0, "decode_check": "header",
                "splits": [s.name for s in plan.splits]}
    writer = SnapshotWriter(str(root), compute_snapshot_id(plan, settings), plan, shard_bytes, settings)
    for spec in plan_shards(sort_records(plan), shard_bytes):
        writer.add_shard(write_shard(spec, writer.uri, plan.class_map.id_to_index))
    return writer.commit().snapshot_uri


@pytest.fixture(scope="module")
def coco_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    source = tmp_path_factory.mktemp("source")
    write_coco_like(str(source), train_images=2, val_images=40, seed=3)
    return str(source)


@pytest.fixture(scope="module")
def coco_like_snapshot(tmp_path_factory: pytest.TempPathFactory, coco_source: str) -> str:
    return _snapshot(tmp_path_factory.mktemp("many-shards"), coco_source, SHARD_BYTES)


@pytest.fixture(scope="module")
def one_shard_snapshot(tmp_path_factory: pytest.TempPathFactory, coco_source: str) -> str:
    """The val split in one shard of row groups of ~4 images (at COCO scale: a 256 MB shard of 4 MB groups)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snapshot_module, "_ROW_GROUP_BYTES", 500_000)
        return _snapshot(tmp_path_factory.mktemp("one-shard"), coco_source, 1 << 30)


def _split_bytes(snapshot: str) -> tuple[int, int]:
    shards = read_manifest(snapshot).splits["val"].shards
    return sum(s.bytes for s in shards), max(s.bytes for s in shards)


def test_val_batches_stream_the_split(coco_like_snapshot: str):
    split_bytes, shard_bytes = _split_bytes(coco_like_snapshot)
    assert split_bytes > 12 * shard_bytes  # the size at which holding the split shows
    cfg = load_config(None, ["model.num_classes=80", "model.imgsz=64", "train.batch_size=2"])
    base = pa.total_allocated_bytes()
    batches = build_val_batches(cfg, coco_like_snapshot)
    assert pa.total_allocated_bytes() - base < shard_bytes  # nothing read up front
    held, images = [], 0
    for batch in batches():
        held.append(pa.total_allocated_bytes() - base)
        images += batch.images.shape[0]
    assert images == 40
    # a shard read holds its row group about 3 times over (file buffer, decoded column, batch)
    assert max(held) < 4 * shard_bytes, f"held {max(held) / 1e6:.1f} MB of a {split_bytes / 1e6:.1f} MB split"
    assert sum(b.images.shape[0] for b in batches()) == 40  # the second pass: the letterboxed cache


def test_iter_split_batches_rows_and_limit(coco_like_snapshot: str):
    ids = [i for t in iter_split_batches(coco_like_snapshot, "val", ["image_id"], batch_rows=7)
           for i in t.column("image_id").to_pylist()]
    sizes = [t.num_rows for t in iter_split_batches(coco_like_snapshot, "val", ["image_id"], batch_rows=7)]
    assert len(ids) == 40 and len(set(ids)) == 40 and sizes == [7] * 5 + [5]
    limited = [t.num_rows for t in iter_split_batches(coco_like_snapshot, "val", ["image_id"], batch_rows=7, limit=9)]
    assert limited == [7, 2]


def test_input_chunks_in_flight_do_not_multiply_with_workers():
    from cocoseg.data.train_input import inflight_per_worker

    assert inflight_per_worker(2, actors=2, world=1) == 4  # one worker: as before, 2 per actor
    for world, actors in ((8, 96), (8, 12), (4, 2), (16, 16)):
        total = world * inflight_per_worker(2, actors=actors, world=world)
        assert 2 * actors <= total <= 2 * (actors + world), (world, actors, total)  # was world x 2 x actors


def test_input_actor_reads_the_row_groups_of_its_chunk_not_the_shard(one_shard_snapshot: str):
    import pyarrow.parquet as pq

    from cocoseg import storage
    from cocoseg.data.schema import list_shards

    (uri,) = list_shards(read_manifest(one_shard_snapshot), "val")
    fs, path = storage.filesystem(uri)
    meta = pq.ParquetFile(path, filesystem=fs).metadata
    shard = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    assert meta.num_row_groups >= 8
    actor = ChunkAugmenter(imgsz=64, num_classes=80)
    rows = actor.rows(uri, 9, 15)
    expected = pq.read_table(path, filesystem=fs, columns=list(INPUT_COLUMNS)).slice(9, 6).to_pylist()
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in expected] and rows[0]["image"] == expected[0]["image"]
    assert actor.bytes_read < shard / 3  # before: the whole shard, for every chunk dealt to this actor
    out = actor.chunk([(uri, 15, 19)], "yolov8", seed=0, epoch=0)  # the next chunk: mostly the cached group
    assert out["image"].shape == (4, 64, 64, 3) and actor.bytes_read < shard / 2


def test_an_epoch_dealt_over_many_actors_reads_the_split_about_once(one_shard_snapshot: str):
    from cocoseg.data.schema import list_shards
    from cocoseg.data.stage import epoch_chunks

    manifest = read_manifest(one_shard_snapshot)
    uris, shard = list_shards(manifest, "val"), manifest.splits["val"].shards
    def read(runs: int) -> float:
        actors = [ChunkAugmenter(imgsz=64, num_classes=80) for _ in range(8)]
        chunks = epoch_chunks([s.rows for s in shard], seed=0, epoch=0, rank=0, world=1, chunk_rows=16,
                              runs_per_chunk=runs)
        for k, chunk in enumerate(chunks):  # dealt round-robin, as cocoseg.data.train_input does
            for index, first, end in chunk:
                actors[k % len(actors)].rows(uris[index], first, end)
        return sum(a.bytes_read for a in actors) / sum(s.bytes for s in shard)

    # whole-shard reads were 8x; contiguous chunks read about once; the default four runs of 4
    # rows per chunk (mixed every epoch) read a group of ~4 images about twice
    assert read(1) < 1.7 and read(4) < 2.6
