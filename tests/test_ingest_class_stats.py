"""See the data: ingest's per-class statistics in the manifest (coco8-seg on a real local Ray),
the summary's class table, the train job's rare-class warning and its MLflow table and chart."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter, defaultdict

import pytest

from cocoseg.data.class_stats import RARE_INSTANCES, class_rows, format_class_table, rare_classes, split_stats
from cocoseg.data.manifest import Manifest

mlflow = pytest.importorskip("mlflow")


def _expected(coco8_seg, split: str, names: list[str]) -> dict:
    """The statistics counted straight from the source COCO JSON (non-crowd instances, its area field)."""
    doc = json.loads((coco8_seg / "annotations" / f"instances_{split}.json").read_text())
    name_of = {c["id"]: c["name"] for c in doc["categories"]}
    per = defaultdict(Counter)
    holders = defaultdict(set)
    for a in doc["annotations"]:
        if a.get("iscrowd"):
            continue
        name = name_of[a["category_id"]]
        per[name]["instances"] += 1
        per[name]["small" if a["area"] < 32 ** 2 else "medium" if a["area"] < 96 ** 2 else "large"] += 1
        holders[name].add(a["image_id"])
    rows = [{"class": n, "images": len(holders[n]), **{k: per[n][k] for k in ("instances", "small", "medium", "large")}}
            for n in names]
    empty = len({i["id"] for i in doc["images"]} - {a["image_id"] for a in doc["annotations"] if not a.get("iscrowd")})
    return {"rows": rows, "empty": empty}


def _table(client, run_id: str, tmp_path):
    """The table as ``MlflowClient.load_table`` reads it (a pandas ``split`` JSON); load_table itself
    searches the runs through the global tracking URI, not the client's."""
    import pandas as pd

    return pd.read_json(client.download_artifacts(run_id, "plots/class_stats.json", str(tmp_path)), orient="split")


def check_coco8_stats(manifest: Manifest, coco8_seg, printed: str) -> None:
    """The manifest's statistics of an ingest of coco8-seg equal those counted from its JSON, and the
    summary table shows them (called by tests/test_ingest.py's coco8 test, which ingests it anyway)."""
    names = list(manifest.class_names)
    for split in ("train", "val"):
        want = _expected(coco8_seg, split, names)
        assert class_rows(manifest, split) == want["rows"]
        assert split_stats(manifest, split)["empty_images"] == want["empty"]
        total = sum(r["instances"] for r in want["rows"]) + split_stats(manifest, split)["crowd_instances"]
        assert total == manifest.splits[split].annotations
    table = format_class_table(manifest, "train", top=3)
    top = max(class_rows(manifest, "train"), key=lambda r: r["instances"])
    lines = table.splitlines()
    assert top["class"] in lines[2] and "classes more" in table and len(lines) == 2 + 3 + 1 + 3
    assert "< rare" in table  # coco8: every class is below RARE_INSTANCES
    assert all(format_class_table(manifest, s) in printed for s in ("train", "val"))  # the ingest summary


def _with_rare(manifest: Manifest) -> Manifest:
    """The synthetic snapshot's manifest as if its last class had 3 instances and a 5th class none."""
    out = json.loads(json.dumps(manifest.to_json()))
    out["class_names"] = [*out["class_names"], "unicorn"]
    stats = out["splits"]["train"]["stats"]["classes"]
    for values in stats.values():
        values[-1] = min(values[-1], 3)
        values.append(0)
    return Manifest.from_json(out, manifest.snapshot_uri)


def test_rare_class_warning_and_mlflow_table_and_chart(tiny_snapshot, mlflow_server, tmp_path, caplog):
    from cocoseg.data.schema import read_manifest
    from cocoseg.engine.class_balance import report_classes

    manifest = _with_rare(read_manifest(tiny_snapshot))
    nc = len(manifest.class_names)

    client = mlflow.tracking.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("t-stats") or client.get_experiment(client.create_experiment("t-stats"))
    run_id = client.create_run(exp.experiment_id, run_name="stats").info.run_id
    with caplog.at_level(logging.WARNING, logger="cocoseg"):
        logged = report_classes(manifest, str(tmp_path / "run"), mlflow_server, run_id)
    below = rare_classes(manifest)
    rare, absent = [c for c, n in below if n > 0], [c for c, n in below if n == 0]
    assert rare and absent and all(n < RARE_INSTANCES for _, n in below)
    warning = [r.getMessage() for r in caplog.records if "training instances" in r.getMessage()]
    assert len(warning) == 1 and f"{len(rare)} of {nc} classes have fewer than {RARE_INSTANCES}" in warning[0]
    assert "data.repeat_factor_threshold" in warning[0] and rare[0] in warning[0]
    assert any(f"{len(absent)} of {nc} classes have no training instance" in r.getMessage() for r in caplog.records)
    assert logged == ["plots/class_stats.json", "plots/class_stats.png"]
    table = _table(client, run_id, tmp_path)
    assert list(table["class"]) == list(manifest.class_names)
    assert list(table["instances"]) == [r["instances"] for r in class_rows(manifest)]
    paths = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert paths == {"plots/class_stats.json", "plots/class_stats.png"}
    png = client.download_artifacts(run_id, "plots/class_stats.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "run" / "plots" / "class_stats.json").exists()  # for a run completed later (offline)
    report_classes(manifest, str(tmp_path / "run"), mlflow_server, run_id)  # a resume: not twice
    assert len(_table(client, run_id, tmp_path)) == nc
    tags = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert tags == [{"path": "plots/class_stats.json", "type": "table"}]  # what the UI and load_table look for
    # an older snapshot (no statistics): no table, no warning, no error
    old = dataclasses.replace(manifest, splits={k: dataclasses.replace(v, stats=None)
                                                for k, v in manifest.splits.items()})
    assert report_classes(old, str(tmp_path / "old"), mlflow_server, run_id) == []
