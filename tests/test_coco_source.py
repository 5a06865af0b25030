"""Source discovery, class maps, fingerprints and input errors (no Ray)."""

from __future__ import annotations

import json
import shutil

import pytest
from ingest_helpers import make_source

from cocoseg.config import ConfigError
from cocoseg.ingest.coco import IngestError, class_map_from_categories, class_map_from_names
from cocoseg.ingest.source import canonical_split, plan_source
from cocoseg.structures import COCO80_TO_COCO91, COCO_CLASS_NAMES


def test_coco_ids_map_to_80_classes_and_back():
    cats = [{"id": cid, "name": COCO_CLASS_NAMES[k]} for k, cid in enumerate(COCO80_TO_COCO91)]
    cmap = class_map_from_categories(cats[::-1], "x.json")
    assert cmap.names == COCO_CLASS_NAMES and len(cmap.names) == 80
    assert cmap.id_to_index[1] == 0 and cmap.id_to_index[90] == 79 and 12 not in cmap.id_to_index
    assert all(cmap.category_ids[cmap.id_to_index[cid]] == cid for cid in COCO80_TO_COCO91)
    assert class_map_from_names(COCO_CLASS_NAMES) == cmap


def test_other_category_sets_map_contiguously_in_id_order():
    cmap = class_map_from_categories([{"id": 7, "name": "b"}, {"id": 3, "name": "a"}], "x.json")
    assert cmap.names == ("a", "b") and cmap.category_ids == (3, 7)
    with pytest.raises(IngestError, match="repeats a category id"):
        class_map_from_categories([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "x.json")


def test_split_names_are_canonical():
    assert [canonical_split(n) for n in ("train2017", "val2017", "test", "minival")] == \
        ["train", "val", "test", "minival"]


def test_coco8_from_folder_and_from_yaml(coco8_seg):
    folder = plan_source(str(coco8_seg))
    via_yaml = plan_source(str(coco8_seg / "coco8-seg.yaml"))
    yolo = plan_source(str(coco8_seg / "coco8-seg.yaml"), layout="yolo")
    assert folder.layout == via_yaml.layout == "coco" and yolo.layout == "yolo"
    assert folder.fingerprint == via_yaml.fingerprint != yolo.fingerprint
    for plan in (folder, yolo):
        assert plan.class_map.names == COCO_CLASS_NAMES
        assert {s.name: (s.images_read, s.instances_read) for s in plan.splits} == {"train": (4, 13), "val": (4, 17)}
        assert all(not s.rejects for s in plan.splits)


def test_fingerprint_follows_listing_and_annotation_bytes(tmp_path):
    make_source(tmp_path / "a", images=8)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    fa, fb = plan_source(str(tmp_path / "a")).fingerprint, plan_source(str(tmp_path / "b")).fingerprint
    assert fa == fb  # a copy elsewhere that keeps sizes and modification times: same fingerprint
    ann = tmp_path / "b" / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["category_id"] = 2 if doc["annotations"][0]["category_id"] != 2 else 3
    ann.write_text(json.dumps(doc))
    assert plan_source(str(tmp_path / "b")).fingerprint != fa
    (tmp_path / "a" / "train" / "extra.jpg").write_bytes((tmp_path / "a" / "train" / "000000000001.jpg").read_bytes())
    fa2 = plan_source(str(tmp_path / "a")).fingerprint
    assert fa2 != fa
    # an image rewritten in place with other bytes of the same size (a corrupt file fixed, say)
    image = tmp_path / "a" / "train" / "000000000001.jpg"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    assert plan_source(str(tmp_path / "a")).fingerprint != fa2


def test_malformed_json_stops_with_the_file_name(tmp_path):
    make_source(tmp_path, images=4)
    bad = tmp_path / "annotations" / "instances_val.json"
    bad.write_text('{"images": [ {"id": 1,, }')
    with pytest.raises(IngestError, match=r"instances_val\.json: malformed JSON at line 1"):
        plan_source(str(tmp_path))


def test_malformed_yaml_stops_with_the_file_name(tmp_path):
    bad = tmp_path / "data.yaml"
    bad.write_text("path: .\ntrain: images/train\nnames: [a, b\n")
    with pytest.raises(ConfigError, match=r"data\.yaml: malformed YAML"):
        plan_source(str(bad))


def test_empty_or_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(IngestError, match="no files under"):
        plan_source(str(tmp_path / "nothing"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(IngestError, match="no annotations/instances_<split>.json"):
        plan_source(str(tmp_path))
    make_source(tmp_path / "s", images=4)
    with pytest.raises(IngestError, match="none of the requested splits"):
        plan_source(str(tmp_path / "s"), splits=("test",))


def test_shipped_ingest_job_config_loads():
    from pathlib import Path

    from cocoseg.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "ingest.yaml",
                      ["ingest.decode_check=full"])
    assert cfg.ingest.source.startswith("s3://") and cfg.ingest.decode_check == "full"
    with pytest.raises(ConfigError, match="decode_check"):
        load_config(None, ["ingest.decode_check=maybe"])
