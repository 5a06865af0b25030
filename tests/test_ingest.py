"""The ingest job end to end on a real local Ray: local folders and a real S3 server (moto)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pyarrow.parquet as pq
import pytest
from ingest_helpers import EXPECTED_REJECTS, make_bad_source, make_source
from pycocotools import mask as mask_utils

from cocoseg import storage
from cocoseg.config import load_config
from cocoseg.data.schema import (
    MANIFEST_NAME,
    QUARANTINE_NAME,
    Manifest,
    SnapshotError,
    latest_snapshot,
    list_shards,
    list_snapshots,
    read_manifest,
    read_split_table,
    snapshot_to_coco,
)
from cocoseg.ingest.job import IngestResult
from cocoseg.ingest.synthetic import write_synthetic_coco
from pipelines.ingest import main, run


def _ingest(source: str, dest: str, *overrides: str) -> IngestResult:
    return run(load_config(None, [f"ingest.source={source}", f"ingest.dest={dest}", *overrides]))


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _mask_areas(coco) -> dict[int, float]:
    out = {}
    for ann in coco.dataset["annotations"]:
        out[ann["id"]] = float(mask_utils.area(coco.annToRLE(ann)))
    return out


def _check_reconciled(manifest: Manifest) -> None:
    c = manifest.counts
    assert c["images_read"] == c["images_written"] + c["images_quarantined"]
    assert c["instances_read"] == c["instances_written"] + c["instances_quarantined"]
    for split in manifest.splits.values():
        assert sum(s.rows for s in split.shards) == split.images


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_synthetic_local_snapshot_rerun_and_round_trip(ray_local, tmp_path, capsys):
    src, dest = tmp_path / "src", str(tmp_path / "dest")
    synth = make_source(src, images=40, size=(96, 64))
    progress = _Lines()
    logging.getLogger("cocoseg").addHandler(progress)  # the cocoseg logger does not propagate
    try:
        result = _ingest(str(src), dest, "ingest.shard_bytes=20000")
    finally:
        logging.getLogger("cocoseg").removeHandler(progress)
    first = result.manifest
    # a progress line (at least the final one) and the one-screen summary
    assert any(f"{first.snapshot_id}: 40/40 images (" in line for line in progress.lines), progress.lines
    summary = capsys.readouterr().out
    assert f"snapshot {first.snapshot_id}" in summary and "read 40 images" in summary
    assert not result.skipped and first.schema_version == 1
    for key in ("snapshot_id", "source", "source_fingerprint", "class_names", "splits", "quarantined",
                "created_at", "duration_s"):
        assert key in json.loads((tmp_path / "dest" / "snapshots" / first.snapshot_id / MANIFEST_NAME).read_text())
    assert list(first.class_names) == synth["class_names"] and first.quarantined == {}
    assert {k: v.images for k, v in first.splits.items()} == synth["splits"]
    assert {k: v.annotations for k, v in first.splits.items()} == synth["instances"]
    _check_reconciled(first)
    train_shards = first.splits["train"].shards
    assert len(train_shards) > 1  # bounded by bytes: ~20 kB of JPEGs per shard
    assert [s.path for s in train_shards] == [f"train/part-{i:05d}.parquet" for i in range(len(train_shards))]
    # deterministic: the same source into another root gives the same id, shards and rows
    again = _ingest(str(src), str(tmp_path / "dest2"), "ingest.shard_bytes=20000").manifest
    assert again.snapshot_id == first.snapshot_id
    for a, b in zip(list_shards(read_manifest(first.snapshot_uri), "train"),
                    list_shards(read_manifest(again.snapshot_uri), "train"), strict=True):
        ta, tb = pq.read_table(a), pq.read_table(b)
        assert ta.equals(tb)
    # rerun on an unchanged source: a no-op
    rerun = _ingest(str(src), dest, "ingest.shard_bytes=20000")
    assert rerun.skipped and rerun.manifest.snapshot_id == first.snapshot_id
    assert rerun.manifest.created_at == first.created_at
    # round trip: snapshot -> COCO dict -> pycocotools; mask areas match the source's within 1 %
    source = _coco(json.loads((src / "annotations" / "instances_train.json").read_text()))
    snap = _coco(snapshot_to_coco(first.snapshot_uri, "train"))
    assert sorted(snap.getImgIds()) == sorted(source.getImgIds())
    src_areas, snap_areas = _mask_areas(source), _mask_areas(snap)
    assert src_areas.keys() == snap_areas.keys()
    assert all(abs(snap_areas[k] - v) <= 0.01 * v for k, v in src_areas.items())
    # a changed source gives a new snapshot; the old one stays
    ann_path = src / "annotations" / "instances_val.json"
    doc = json.loads(ann_path.read_text())
    doc["annotations"].pop()
    ann_path.write_text(json.dumps(doc))
    changed = _ingest(str(src), dest, "ingest.shard_bytes=20000")
    assert changed.manifest.snapshot_id != first.snapshot_id and not changed.skipped
    assert {m.snapshot_id for m in list_snapshots(dest)} == {first.snapshot_id, changed.manifest.snapshot_id}
    assert latest_snapshot(dest).endswith(changed.manifest.snapshot_id)


def test_job_entrypoint_with_a_config_file(ray_local, tmp_path, capsys):
    """``python -m pipelines.ingest --config ... key=value`` (the ``ray job submit`` entrypoint)."""
    make_source(tmp_path / "src", images=6, size=(64, 48))
    config = tmp_path / "ingest.yaml"
    config.write_text(f"storage:\n  root: {tmp_path / 'out'}\ningest:\n  shard_bytes: 1000000\n")
    assert main(["--config", str(config), f"ingest.source={tmp_path / 'src'}", "ingest.decode_check=full"]) == 0
    [manifest] = list_snapshots(str(tmp_path / "out"))
    assert manifest.counts["images_written"] == 6 and "read 6 images" in capsys.readouterr().out
    assert main(["--config", str(config), "ingest.shard_byte=1"]) == 2
    assert "Did you mean 'shard_bytes'" in capsys.readouterr().err


def test_every_quarantine_reason_end_to_end(ray_local, tmp_path):
    make_bad_source(tmp_path / "src")
    manifest = _ingest(str(tmp_path / "src"), str(tmp_path / "dest")).manifest
    _check_reconciled(manifest)
    got = {reason: (c.get("images", 0), c.get("instances", 0)) for reason, c in manifest.quarantined.items()}
    assert set(got) == set(EXPECTED_REJECTS)
    for reason, (images, instances) in EXPECTED_REJECTS.items():
        assert got[reason][0] == images
        if instances is not None:
            assert got[reason][1] == instances
    quarantine = pq.read_table(storage.join(manifest.snapshot_uri, QUARANTINE_NAME)).to_pylist()
    assert Counter(r["reason"] for r in quarantine) == Counter(
        {reason: sum(c.values()) for reason, c in manifest.quarantined.items()})
    assert all(r["detail"] or r["annotation_id"] is not None for r in quarantine)
    rows = read_split_table(manifest.snapshot_uri, "train", columns=["image_id", "annotations"]).to_pylist()
    assert not {1, 2, 3, 4, 5} & {r["image_id"] for r in rows}  # rejected images are not in the snapshot
    assert {7, 8} <= {r["image_id"] for r in rows}  # greyscale and CMYK are kept
    # the crowd RLE survives the round trip: snapshot -> COCO dict -> pycocotools, same area
    coco = _coco(snapshot_to_coco(manifest.snapshot_uri, "train"))
    crowd = [a for a in coco.dataset["annotations"] if a["iscrowd"]]
    assert [a["id"] for a in crowd] == [90008]
    assert float(mask_utils.area(coco.annToRLE(crowd[0]))) == 96.0


def _by_image(snapshot: str) -> dict[int, list[tuple[int, list[float]]]]:
    out = {}
    for split in ("train", "val"):
        for row in read_split_table(snapshot, split, columns=["image_id", "annotations"]).to_pylist():
            anns = []
            for a in row["annotations"]:
                xs = [v for p in a["polygons"] for v in p[0::2]]
                ys = [v for p in a["polygons"] for v in p[1::2]]
                anns.append((a["category"], [min(xs), min(ys), max(xs), max(ys)]))
            out[row["image_id"]] = sorted(anns)
    return out


def test_coco8_from_coco_json_and_from_yolo_labels_agree(ray_local, coco8_seg, tmp_path, capsys):
    from test_ingest_class_stats import check_coco8_stats

    coco = _ingest(str(coco8_seg), str(tmp_path / "a")).manifest
    check_coco8_stats(coco, coco8_seg, capsys.readouterr().out)  # per-class statistics, the class table
    yolo = _ingest(str(coco8_seg / "coco8-seg.yaml"), str(tmp_path / "b"), "ingest.layout=yolo").manifest
    assert coco.layout == "coco" and yolo.layout == "yolo"
    for m in (coco, yolo):
        _check_reconciled(m)
        assert m.counts["images_written"] == 8 and m.counts["instances_written"] == 30
        assert len(m.class_names) == 80
    a, b = _by_image(coco.snapshot_uri), _by_image(yolo.snapshot_uri)
    assert a.keys() == b.keys() and len(a) == 8
    for image_id in a:
        assert [c for c, _ in a[image_id]] == [c for c, _ in b[image_id]]
        for (_, box_a), (_, box_b) in zip(a[image_id], b[image_id], strict=True):
            assert max(abs(x - y) for x, y in zip(box_a, box_b, strict=True)) <= 2.0, (image_id, box_a, box_b)
    # round trip of the real polygons (multi-part included): areas within 1 % of the source's
    for split in ("train", "val"):
        source = _coco(json.loads((coco8_seg / "annotations" / f"instances_{split}.json").read_text()))
        snap = _coco(snapshot_to_coco(coco.snapshot_uri, split))
        src_areas, snap_areas = _mask_areas(source), _mask_areas(snap)
        assert src_areas.keys() == snap_areas.keys()
        assert all(abs(snap_areas[k] - v) <= 0.01 * v for k, v in src_areas.items())
        assert {c["id"] for c in snap.dataset["categories"]} == {c["id"] for c in source.dataset["categories"]}


def test_s3_source_to_s3_snapshot(ray_local, s3_bucket, coco8_seg):
    storage.upload_dir(coco8_seg, f"{s3_bucket}/coco8")
    m = _ingest(f"{s3_bucket}/coco8", f"{s3_bucket}/out").manifest
    assert m.snapshot_uri.startswith("s3://") and m.counts["instances_written"] == 30
    summary = write_synthetic_coco(f"{s3_bucket}/synth", images=16, size=(64, 48), seed=5)
    s = _ingest(f"{s3_bucket}/synth", f"{s3_bucket}/out").manifest
    _check_reconciled(s)
    assert {k: v.images for k, v in s.splits.items()} == summary["splits"]
    assert {x.snapshot_id for x in list_snapshots(f"{s3_bucket}/out")} == {m.snapshot_id, s.snapshot_id}
    rows = read_split_table(s.snapshot_uri, "val").to_pylist()
    assert len(rows) == summary["splits"]["val"] and all(r["image"][:2] == b"\xff\xd8" for r in rows)
    assert storage.exists(storage.join(s.snapshot_uri, MANIFEST_NAME))
    assert _ingest(f"{s3_bucket}/synth", f"{s3_bucket}/out").skipped


def test_readers_refuse_missing_manifests_and_unknown_versions(tmp_path):
    with pytest.raises(SnapshotError, match="has no _manifest.json"):
        read_manifest(str(tmp_path / "snapshots" / "nope"))
    storage.write_json(str(tmp_path / "s" / MANIFEST_NAME), {"schema_version": 99, "snapshot_id": "x"})
    with pytest.raises(SnapshotError, match="schema_version 99 is not supported"):
        read_manifest(str(tmp_path / "s"))
    with pytest.raises(SnapshotError, match="no complete snapshot"):
        latest_snapshot(str(tmp_path))


# A manifest as the ingest of 2026-12-06 (commit 406b6cb, before per-class statistics) wrote it,
# and the same with a split's ``stats`` and a key this code does not know.
_OLD_MANIFEST = """{
  "snapshot_id": "9cebfaa87fbd85c6",
  "schema_version": 1,
  "source": "/data/src",
  "layout": "coco",
  "source_fingerprint": "f18fb8d0f5ec12aee8d2a883fe839568557e309cfbbdf68ad4d09e167782d5da",
  "class_names": ["circle", "square", "triangle", "star"],
  "category_ids": [1, 2, 3, 4],
  "splits": {
    "train": {"source_split": "train", "images": 192, "annotations": 484,
              "shards": [{"path": "train/part-00000.parquet", "rows": 192, "bytes": 851154}]},
    "val": {"source_split": "val", "images": 48, "annotations": 123,
            "shards": [{"path": "val/part-00000.parquet", "rows": 48, "bytes": 223975}]}
  },
  "quarantined": {"bad_polygon": {"instances": 2}},
  "counts": {"images_read": 240, "images_written": 240, "images_quarantined": 0,
             "instances_read": 609, "instances_written": 607, "instances_quarantined": 2},
  "settings": {"shard_bytes": 268435456, "box_tolerance_px": 2.0, "decode_check": "header",
               "splits": ["train", "val"]},
  "created_at": "2026-12-06T12:07:55.733+00:00",
  "duration_s": 5.985,
  "cocoseg_version": "0.1.0",
  "git_commit": "406b6cbcf365c3f3504abbe8941e2ae5117358ba"
}"""


def test_a_manifest_written_by_earlier_code_reads_and_round_trips(tmp_path):
    """``read_manifest`` gives a frozen, typed Manifest of an older snapshot's JSON (no ``stats``);
    writing it back gives the same document, per-class statistics and unknown keys included."""
    import dataclasses
    import pickle

    from cocoseg.data.class_stats import format_class_table, split_stats
    from cocoseg.data.manifest import ShardEntry, dumps_manifest
    from cocoseg.data.schema import manifest_summary

    storage.write_text(str(tmp_path / "old" / MANIFEST_NAME), _OLD_MANIFEST)
    m = read_manifest(str(tmp_path / "old") + "/")
    assert m.snapshot_uri == str(tmp_path / "old") and m.snapshot_id == "9cebfaa87fbd85c6"
    assert m.class_names == ("circle", "square", "triangle", "star") and m.category_ids == (1, 2, 3, 4)
    assert m.splits["val"].images == 48 and m.splits["train"].shards == (
        ShardEntry("train/part-00000.parquet", 192, 851154),)
    assert m.quarantined["bad_polygon"]["instances"] == 2 and m.settings["splits"] == ("train", "val")
    assert list_shards(m, "val") == [storage.join(str(tmp_path / "old"), "val", "part-00000.parquet")]
    assert split_stats(m, "train") is None and "ingested by an older cocoseg" in format_class_table(m)
    assert "bad_polygon: {'instances': 2}" in manifest_summary(m) and "took 6.0 s" in manifest_summary(m)
    assert json.loads(dumps_manifest(m)) == json.loads(_OLD_MANIFEST)
    assert pickle.loads(pickle.dumps(m)) == m == dataclasses.replace(m)  # it may cross to Ray workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.snapshot_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.counts["images_read"] = 0  # type: ignore[index]

    doc = json.loads(_OLD_MANIFEST)
    doc["splits"]["train"]["stats"] = {"empty_images": 1, "crowd_instances": 0,
                                       "classes": {"images": [3, 0, 2, 1], "instances": [5, 0, 2, 1]}}
    doc["future_key"] = {"kept": True}
    text = json.dumps(doc, indent=2) + "\n"  # how the ingest writes it
    storage.write_text(str(tmp_path / "new" / MANIFEST_NAME), text)
    m = read_manifest(str(tmp_path / "new"))
    assert split_stats(m, "train")["classes"]["images"] == (3, 0, 2, 1) and m.extra["future_key"]["kept"]
    assert dumps_manifest(m) == text

    del doc["class_names"]
    storage.write_json(str(tmp_path / "bad" / MANIFEST_NAME), doc)
    with pytest.raises(SnapshotError, match=r"_manifest.json: no key 'class_names'; re-ingest"):
        read_manifest(str(tmp_path / "bad"))
