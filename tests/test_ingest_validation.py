"""Validation and quarantine, record by record, without Ray (the same functions Ray Data maps)."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from ingest_helpers import EXPECTED_REJECTS, make_bad_source
from PIL import Image

from cocoseg.ingest.records import BadImage, check_annotation, inspect_image, process_record
from cocoseg.ingest.snapshot import sort_records
from cocoseg.ingest.source import plan_source


def _jpeg(mode: str = "RGB", size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 200, 30, 0)[: len(mode)]).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_inspect_image_accepts_colour_modes(mode):
    assert inspect_image(_jpeg(mode)) == (40, 30, mode)


@pytest.mark.parametrize("check", ["header", "draft", "full"])
def test_inspect_image_rejects_broken_bytes(check):
    noise = np.random.default_rng(0).integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    good = buf.getvalue()  # noisy: most bytes are entropy-coded data, so half cuts into it
    cases = {"unreadable_image": b"GIF? no, plain text", "truncated_image": good[: len(good) // 2]}
    for reason, data in cases.items():
        with pytest.raises(BadImage) as err:
            inspect_image(data, check)
        assert err.value.reason == reason
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(png, format="PNG")
    broken = bytearray(png.getvalue())
    broken[-20] ^= 0xFF  # flips a byte of the IDAT chunk: the CRC no longer matches
    with pytest.raises(BadImage, match="corrupt_image"):
        inspect_image(bytes(broken), check)


def test_check_annotation_scales_yolo_polygons_and_derives_box_and_area():
    ann = {"id": 5, "category_id": 3, "bbox": None, "area": None, "iscrowd": 0,
           "segmentation": [[0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75]]}
    out, reason, _ = check_annotation(ann, 200, 100, True, {3: 0}, 2.0)
    assert reason == "" and out["category"] == 0 and out["category_id"] == 3
    assert out["bbox_xywh"] == pytest.approx([50, 25, 100, 50])
    assert out["area"] == pytest.approx(100 * 50, rel=0.03)
    assert out["polygons"][0][:2] == pytest.approx([50, 25])


def test_box_tolerance_is_honoured():
    ann = {"id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 101.5, 10],
           "segmentation": [[0, 0, 10, 0, 10, 10]]}
    assert check_annotation(ann, 100, 50, False, {1: 0}, 2.0)[1] == ""
    assert check_annotation(ann, 100, 50, False, {1: 0}, 1.0)[1] == "box_outside_image"


def test_every_reason_is_quarantined_and_counts_reconcile(tmp_path):
    doc = make_bad_source(tmp_path / "src")
    plan = plan_source(str(tmp_path / "src"))
    out = [process_record(r, plan.class_map.id_to_index, tolerance_px=2.0) for r in sort_records(plan)]
    rejects = [r for s in plan.splits for r in s.rejects]
    rejects += [r for row in out if row["_rejects"] for r in json.loads(row["_rejects"])]
    images = Counter(r["reason"] for r in rejects if r["annotation_id"] is None)
    instances = Counter(r["reason"] for r in rejects if r["annotation_id"] is not None)
    for reason, (n_images, n_instances) in EXPECTED_REJECTS.items():
        assert images[reason] == n_images, (reason, images)
        if n_instances is not None:
            assert instances[reason] == n_instances, (reason, instances)
    assert set(images) | set(instances) == set(EXPECTED_REJECTS)
    kept = [r for r in out if r["_keep"]]
    # reconciliation: every image and instance read is either written or quarantined
    read_images = sum(s.images_read for s in plan.splits)
    read_instances = sum(s.instances_read for s in plan.splits)
    assert read_images == len(kept) + sum(images.values())
    assert read_instances == sum(len(r["annotations"]) for r in kept) + sum(instances.values())
    assert read_images == len(doc["images"]) + 6  # train entries (18 + 1 duplicate id) + 6 val
    modes = {r["image_id"]: Image.open(io.BytesIO(r["image"])).mode for r in kept if r["image_id"] in (7, 8)}
    assert modes == {7: "L", 8: "CMYK"}  # accepted, original bytes kept
    crowd = [a for r in kept for a in r["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["area"] == 96 and crowd[0]["rle_counts"]


def test_shards_are_planned_from_the_listing_before_any_read(tmp_path):
    from ingest_helpers import make_source

    from cocoseg.ingest.snapshot import plan_shards

    make_source(tmp_path / "src", images=30, size=(64, 48))
    records = sort_records(plan_source(str(tmp_path / "src")))
    sizes = {r["file_name"]: (tmp_path / "src" / r["split"] / r["file_name"]).stat().st_size for r in records}
    assert all(r["size"] == sizes[r["file_name"]] for r in records)  # the listing's sizes
    budget = 3 * max(sizes.values())
    specs = plan_shards(records, budget)
    assert [r for s in specs for r in s["records"]] == records  # every record once, in order
    for split in ("train", "val"):
        mine = [s for s in specs if s["split"] == split]
        assert [s["path"] for s in mine] == [f"{split}/part-{i:05d}.parquet" for i in range(len(mine))]
    for a, b in zip(specs[:-1], specs[1:], strict=True):
        assert sum(r["size"] for r in a["records"]) <= budget
        if a["split"] == b["split"]:  # closed only because the next record would not fit
            assert sum(r["size"] for r in a["records"]) + b["records"][0]["size"] > budget
    assert len(specs) > 4 and plan_shards(records, budget) == specs
    assert len(plan_shards(records, 10**9)) == 2  # one per split
    assert [len(s["records"]) for s in plan_shards(records, 1024)] == [1] * 30  # a record never splits


def test_write_shard_writes_its_file_and_returns_reconciling_metadata(tmp_path):
    from cocoseg.ingest.snapshot import plan_shards, write_shard

    make_bad_source(tmp_path / "src")
    plan = plan_source(str(tmp_path / "src"))
    records = sort_records(plan)
    snap = str(tmp_path / "snap")
    metas = [write_shard(s, snap, plan.class_map.id_to_index) for s in plan_shards(records, 10**9)]
    expected = [process_record(r, plan.class_map.id_to_index, decode_check="header") for r in records]
    kept = [r for r in expected if r["_keep"]]
    assert sum(m["rows"] for m in metas) == len(kept)
    assert sum(m["instances"] for m in metas) == sum(len(r["annotations"]) for r in kept)
    rejects = [r for row in expected if row["_rejects"] for r in json.loads(row["_rejects"])]
    assert [r for m in metas for r in m["rejects"]] == rejects
    for m in metas:
        table = pq.read_table(tmp_path / "snap" / m["path"])
        assert table.num_rows == m["rows"] and (tmp_path / "snap" / m["path"]).stat().st_size == m["bytes"]
        assert table.column("image_id").to_pylist() == [r["image_id"] for r in kept if r["split"] == m["split"]]
    # a shard whose every image is rejected writes no file and reports no rows
    broken = [r for r in records if r["image_id"] in {x["image_id"] for x in rejects if x["annotation_id"] is None}]
    meta = write_shard({"split": "train", "index": 7, "path": "train/part-00007.parquet", "records": broken},
                       snap, plan.class_map.id_to_index)
    assert meta["rows"] == 0 and meta["bytes"] == 0 and not (tmp_path / "snap" / "train" / "part-00007.parquet").exists()
    assert len([r for r in meta["rejects"] if r["annotation_id"] is None]) == len(broken)
