"""Batch inference (``pipelines.infer`` / ``cocoseg infer``) on real local Ray, moto S3 and MLflow,
and EXIF orientation applied alike by ``cocoseg predict`` and the served pyfunc model."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, stop
from PIL import Image
from pycocotools import mask as mask_utils

from cocoseg import storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_NAMES = ["circle", "square", "triangle", "star"]
SMALL = ["evaluate.actors=1", "evaluate.cpus_per_actor=1", "evaluate.batch_size=4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An n-variant 4-class checkpoint at 64 px whose class logits are pushed up, so it detects things."""
    from export_helpers import detecting_checkpoint

    return detecting_checkpoint(tmp_path_factory.mktemp("weights") / "w", class_names=CLASS_NAMES)


def _images(folder: Path, coco8_seg: Path, copies: int = 1) -> list[str]:
    """coco8's 8 JPEGs (``copies`` times, under other names), a corrupt JPEG and a non-image file."""
    folder.mkdir(parents=True)
    for k in range(copies):
        for src in sorted((coco8_seg / "images").rglob("*.jpg")):
            shutil.copy(src, folder / f"{k}-{src.name}")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(200)))
    (folder / "notes.txt").write_text("not an image\n")
    return sorted(str(p) for p in folder.iterdir())


def _rows(out: str) -> list[dict]:
    manifest = storage.read_json(storage.join(out, "_manifest.json"))
    rows = []
    for name in manifest["files"]:
        rows += pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, name)))).to_pylist()
    return rows


def _check(out: str, sources: list[str]) -> dict:
    """Every source exactly once; the bad two are error rows; counts reconcile; rows are well formed."""
    manifest = storage.check_manifest(out, "_manifest.json", hashes=True)
    rows = _rows(out)
    assert sorted(r["source_uri"] for r in rows) == sorted(sources)
    failed = {r["source_uri"].rsplit("/", 1)[-1]: r["error"] for r in rows if r["error"] is not None}
    assert set(failed) == {"corrupt.jpg", "notes.txt"}, failed
    assert all("corrupt.jpg" in failed["corrupt.jpg"] and "not a decodable image" in e for e in failed.values())
    c = manifest["counts"]
    assert c["read"] == len(sources) == c["predicted"] + c["failed"] and c["failed"] == 2
    assert c["detections"] == sum(len(r["scores"]) for r in rows if r["error"] is None) > 0
    for row in rows:
        if row["error"] is not None:
            assert row["width"] is None and row["scores"] is None
            continue
        assert len(row["boxes_xyxy"]) == len(row["scores"]) == len(row["classes"]) == len(row["masks_rle"])
        assert row["class_names"] == [CLASS_NAMES[k] for k in row["classes"]]
        for counts in row["masks_rle"][:3]:
            shape = mask_utils.decode({"size": [row["height"], row["width"]], "counts": counts.encode()}).shape
            assert shape == (row["height"], row["width"])
    return manifest


def test_infer_local_folder_errors_are_rows_and_a_rerun_is_a_noop(ray_local, weights, coco8_seg, tmp_path, capsys):
    from cocoseg.config import load_config
    from cocoseg.inference import Predictor, read_image
    from pipelines import infer

    sources = _images(tmp_path / "in", coco8_seg)
    out = str(tmp_path / "out")
    cfg = load_config(None, [*SMALL, "evaluate.chunk_images=4"])
    doc = infer.run(cfg, weights, str(tmp_path / "in"), out)
    manifest = _check(out, sources)
    assert not doc["noop"] and len(manifest["files"]) == 3 and manifest["weights"]["sha256"] == doc["weights"]["sha256"]
    assert manifest["protocol"]["conf"] == 0.25 and not manifest["protocol"]["multi_label"]
    printed = capsys.readouterr().out
    assert "10 images read, 8 predicted, 2 failed" in printed and "img/s" in printed and out in printed

    # The job's rows are the one predictor's detections (predict mode), EXIF applied by the same decode.
    row = next(r for r in _rows(out) if r["source_uri"].endswith("0-000000000009.jpg"))
    rgb = read_image(row["source_uri"])
    (det,) = Predictor.load(weights, conf=0.25).predict([rgb], masks="rle")
    assert (row["height"], row["width"]) == rgb.shape[:2] and len(row["scores"]) == len(det)
    np.testing.assert_allclose(row["boxes_xyxy"], det.boxes_xyxy.numpy(), atol=0.01)
    assert row["masks_rle"] == [r["counts"] for r in det.masks_rle]

    stamps = {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()}
    again = infer.run(cfg, weights, str(tmp_path / "in"), out)
    assert again["noop"] and "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()} == stamps

    # A job stopped before its manifest (the state a kill leaves; the SIGKILL itself is the
    # extended test below): the rerun predicts only the missing part and keeps the finished files.
    (Path(out) / "_manifest.json").unlink()
    lost = sorted(n for n in stamps if n.startswith("part-"))[-1]
    (Path(out) / lost).unlink()
    resumed = infer.run(cfg, weights, str(tmp_path / "in"), out)
    _check(out, sources)
    kept = {n: t for n, t in stamps.items() if n.startswith("part-") and n != lost}
    assert resumed["this_run"]["files_reused"] == len(kept) == 2 and 0 < resumed["this_run"]["images"] <= 4
    assert {n: (Path(out) / n).stat().st_mtime_ns for n in kept} == kept


def test_infer_s3_prefix_with_weights_on_s3(ray_local, weights, coco8_seg, s3_bucket, tmp_path, cli):
    from cocoseg.config import load_config
    from pipelines import infer

    local = _images(tmp_path / "in", coco8_seg)
    for path in local:
        storage.write_bytes(f"{s3_bucket}/incoming/{Path(path).name}", Path(path).read_bytes())
    storage.upload_dir(weights, f"{s3_bucket}/weights/w")
    sources = [f"{s3_bucket}/incoming/{Path(p).name}" for p in local]
    out = f"{s3_bucket}/predictions/run1"
    doc = infer.run(load_config(None, [*SMALL, "evaluate.chunk_images=5"]), f"{s3_bucket}/weights/w",
                    f"{s3_bucket}/incoming/", out)
    assert "10 images read, 8 predicted, 2 failed" in doc["summary"]
    manifest = _check(out, sources)
    assert manifest["source"]["kind"] == "files" and len(manifest["files"]) == 2
    # The real console command in its documented form (overrides after --out DEST): a no-op only
    # if it read evaluate.chunk_images=5 (the default, 256, plans one file, not two).
    proc = cli("infer", f"{s3_bucket}/weights/w", f"{s3_bucket}/incoming/", "--out", out, *SMALL,
               "evaluate.chunk_images=5")
    assert "nothing to do" in proc.stdout and "Traceback" not in proc.stderr, proc.stdout + proc.stderr


def test_infer_other_weights_into_the_same_folder_is_a_one_line_error(ray_local, weights, coco8_seg, tmp_path, cli):
    from cocoseg.config import load_config
    from pipelines import infer

    _images(tmp_path / "in", coco8_seg)
    out = str(tmp_path / "out")
    infer.run(load_config(None, [*SMALL, "evaluate.chunk_images=16"]), weights, str(tmp_path / "in"), out)
    proc = cli("infer", weights, str(tmp_path / "in"), "--out", out, "evaluate.predict_conf=0.5", check=False)
    assert proc.returncode == 2 and "holds predictions of other weights, protocol or source" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.extended  # covered in make test: docs/reliability.md, "extended" table
def test_infer_killed_midway_resumes_without_redoing_files(ray_local, weights, coco8_seg, tmp_path):
    """SIGKILL the job's driver after its first part file, rerun: every image once, no finished file redone."""
    from cocoseg.config import load_config
    from pipelines import infer

    sources = _images(tmp_path / "in", coco8_seg, copies=3)
    out = tmp_path / "out"
    args = [weights, str(tmp_path / "in"), "--out", str(out),
            "evaluate.actors=1", "evaluate.batch_size=1", "evaluate.chunk_images=1"]
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address, RAY_TRAIN_ENABLE_PRINT_PATCH="0")
    log = tmp_path / "job.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.infer", *args], cwd=REPO, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not any(out.glob("part-*.parquet")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stop(proc)
    done = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("part-*.parquet")}
    assert done, log.read_text()[-3000:]
    assert not (out / "_manifest.json").exists(), "the job finished before the kill: nothing was resumed"
    assert len(done) < len(sources)

    doc = infer.run(load_config(None, args[4:]), weights, str(tmp_path / "in"), str(out))
    _check(str(out), sources)
    assert doc["this_run"]["files_reused"] == len(done) and doc["this_run"]["images"] == len(sources) - len(done)
    assert {n: (out / n).stat().st_mtime_ns for n in done} == {n: t[0] for n, t in done.items()}
    assert {n: (out / n).stat().st_ino for n in done} == {n: t[1] for n, t in done.items()}
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_infer_on_a_snapshot(ray_local, weights, tmp_path):
    from _train_support import make_snapshot

    from cocoseg.config import load_config
    from cocoseg.data.schema import read_manifest
    from pipelines import infer

    snapshot = make_snapshot(tmp_path / "snap", images=12, val_fraction=0.25)
    manifest = read_manifest(snapshot)
    doc = infer.run(load_config(None, SMALL), weights, snapshot, str(tmp_path / "out"), split="val")
    rows = _rows(str(tmp_path / "out"))
    assert doc["source"]["kind"] == "snapshot" and doc["source"]["snapshot_id"] == manifest.snapshot_id
    assert len(rows) == doc["counts"]["read"] == manifest.splits["val"].images and doc["counts"]["failed"] == 0
    assert all(r["source_uri"].startswith(f"{snapshot}#val/") and (r["width"], r["height"]) == (96, 80) for r in rows)


# ------------------------------------------------------------------------------ EXIF orientation


def _rotated_jpeg() -> bytes:
    """A 96 x 64 JPEG whose EXIF Orientation (6) says: show it turned 90 degrees clockwise (64 x 96)."""
    rng = np.random.default_rng(7)
    pixels = np.full((64, 96, 3), 40, np.uint8)
    pixels[8:40, 10:50] = (230, 60, 60)  # a block off-centre, so a rotation moves its box
    pixels += rng.integers(0, 20, pixels.shape, dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _predict_json(tmp_path: Path, jpeg: bytes, max_det: int) -> dict:
    """``cocoseg predict``'s code path (run_predictor) with the Predictor on the TinySeg export's model."""
    from export_helpers import TinySeg

    from cocoseg.inference import Predictor
    from cocoseg.inference.files import run_predictor

    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg)
    predictor = Predictor(TinySeg(seed=0).eval(), class_names=["a", "b", "c"], imgsz=64, conf=0.3, max_det=max_det)
    run_predictor(predictor, [str(path)], str(tmp_path / "pred"))
    return json.loads((tmp_path / "pred" / "rotated.json").read_text())


def _same_boxes(served: dict, predicted: dict) -> None:
    assert (served["width"], served["height"]) == (predicted["width"], predicted["height"]) == (64, 96)
    dets = predicted["detections"]
    assert len(served["scores"]) == len(dets) > 0
    assert served["classes"] == [d["class_id"] for d in dets]
    np.testing.assert_allclose(served["scores"], [d["score"] for d in dets], atol=1e-3)
    np.testing.assert_allclose(served["boxes_xyxy"], [d["box_xyxy"] for d in dets], atol=0.05)


def test_exif_rotated_jpeg_gives_the_same_boxes_in_predict_and_the_pyfunc(tmp_path):
    """The pyfunc class itself (what ``mlflow models serve`` runs) against ``cocoseg predict``'s path."""
    from export_helpers import make_export

    from cocoseg.registry import serving

    export = make_export(tmp_path / "exp")
    info = {"imgsz": 64, "num_classes": 3, "class_names": ["a", "b", "c"],
            "onnx_sha256": storage.sha256((export / "model.onnx").read_bytes())}
    (tmp_path / "serving.json").write_text(json.dumps(info))
    context = type("Context", (), {"artifacts": {"onnx": str(export / "model.onnx"),
                                                 "serving": str(tmp_path / "serving.json")}})()
    model = serving.SegmentationModel()
    model.load_context(context)
    jpeg = _rotated_jpeg()
    (served,) = model.predict(context, {"image": [jpeg]}, params={"conf": 0.3, "max_det": 5})
    _same_boxes(served, _predict_json(tmp_path, jpeg, max_det=5))
    # The test has teeth: ignoring the orientation gives another frame and other boxes.
    (stored,) = model.predict(context, {"image": [_strip_exif(jpeg)]}, params={"conf": 0.3, "max_det": 5})
    assert (stored["width"], stored["height"]) == (96, 64)


def _strip_exif(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    with Image.open(io.BytesIO(jpeg)) as img:
        img.save(buf, format="PNG")  # the stored grid, no orientation tag
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.extended  # covered in make test: docs/reliability.md, "extended" table
def test_exif_rotated_jpeg_through_mlflow_models_serve(mlflow_server, tmp_path):
    from export_helpers import make_export, serve_and_predict

    from cocoseg.registry import register_export

    name = f"exif-{uuid.uuid4().hex[:8]}"
    register_export(make_export(tmp_path / "exp"), name=name, tracking_uri=mlflow_server)
    jpeg = _rotated_jpeg()
    (served,) = serve_and_predict(f"models:/{name}@champion", mlflow_server, jpeg, tmp_path, conf=0.3,
                                  max_det=5)["predictions"]
    _same_boxes(served, _predict_json(tmp_path, jpeg, max_det=5))
