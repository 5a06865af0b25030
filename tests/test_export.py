"""ONNX export: the fixed I/O signature, dynamic axes, embedded weights, parity (and its failure on
a tampered graph), in-graph NMS, and the committed export directory. CPU only, a tiny stand-in."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import TinySeg, make_export, read_card
from onnx import numpy_helper

from cocoseg.bundle import BundleError, open_bundle
from cocoseg.config import ConfigError, ExportConfig
from cocoseg.export import TOLERANCES, ExportError, ParityError, check_parity, export_onnx
from cocoseg.export.onnx import nms_reference
from cocoseg.export.parity import parity_input
from cocoseg.model import decode

torch.set_num_threads(2)
IMGSZ = 64


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = TinySeg().eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    info = export_onnx(model, path, num_classes=3, imgsz=IMGSZ)
    return model, path, info


def test_io_signature_dynamic_batch_and_embedded_weights(exported):
    model, path, info = exported
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["pred", "proto"]
    assert info.input_shape == ["batch", 3, IMGSZ, IMGSZ]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no .onnx.data beside it
    x = parity_input(3, IMGSZ).numpy()
    pred, protos = _session(path).run(None, {"images": x})
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert pred.shape == (3, 4 + 3 + 32, anchors) and protos.shape == (3, 32, IMGSZ // 4, IMGSZ // 4)


def test_parity_report_within_tolerances(exported):
    model, path, _ = exported
    report = check_parity(model, path, num_classes=3, imgsz=IMGSZ, batches=(1, 2))
    assert report.batches == [1, 2]
    for name in ("pred", "proto"):
        assert report.max_abs[name] <= TOLERANCES[name]["atol"], report.max_abs


def test_tampered_onnx_fails_parity(exported, tmp_path):
    model, path, _ = exported
    proto = onnx.load(str(path))
    weight = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(weight).copy()
    arr.flat[0] += 0.5  # one changed weight of the largest tensor
    weight.CopyFrom(numpy_helper.from_array(arr, weight.name))
    bad = tmp_path / "tampered.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ParityError, match=r"differs from the eager model at batch 1.*atol"):
        check_parity(model, bad, num_classes=3, imgsz=IMGSZ)


def test_nms_in_graph_matches_the_eager_reference(tmp_path):
    model = TinySeg().eval()
    path = tmp_path / "nms.onnx"
    info = export_onnx(model, path, num_classes=3, imgsz=IMGSZ, nms=True, nms_conf=0.5, nms_iou=0.5)
    assert info.output_names == ["pred", "proto", "keep"]
    check_parity(model, path, num_classes=3, imgsz=IMGSZ, nms=True, nms_conf=0.5, nms_iou=0.5)
    keep = _session(path).run(["keep"], {"images": parity_input(2, IMGSZ).numpy()})[0]
    assert keep.shape[1] == 3 and len(keep) > 0 and set(keep[:, 0]) == {0, 1}


def test_in_graph_nms_keeps_what_the_torch_nms_keeps_on_the_same_candidates(tmp_path):
    """ONNX ``NonMaxSuppression`` (``keep``) against the one torch NMS (``postprocess.nms``) run per
    image and class on the same candidates (score > conf): the same anchors in the same order, and
    the kept boxes equal the eager model's within 1e-4 px."""
    from cocoseg.model.postprocess import nms

    model = TinySeg().eval()
    path = tmp_path / "nms.onnx"
    conf, iou = 0.5, 0.5
    export_onnx(model, path, num_classes=3, imgsz=IMGSZ, nms=True, nms_conf=conf, nms_iou=iou)
    x = parity_input(2, IMGSZ)
    pred, keep = _session(path).run(["pred", "keep"], {"images": x.numpy()})
    with torch.no_grad():
        eager_pred, _ = decode(model(x))
    pred = torch.from_numpy(pred)
    xyxy = torch.cat([pred[:, :2] - pred[:, 2:4] / 2, pred[:, :2] + pred[:, 2:4] / 2], 1).transpose(1, 2)
    suppressed = 0
    for b in range(2):
        for c in range(3):
            scores = pred[b, 4 + c]
            cand = torch.nonzero(scores > conf).flatten()
            want = cand[nms(xyxy[b, cand], scores[cand], iou, max_keep=100)].tolist()
            got = [int(r[2]) for r in keep if r[0] == b and r[1] == c]
            assert got == want, (b, c)
            suppressed += len(cand) - len(want)
            torch.testing.assert_close(pred[b, :4, got], eager_pred[b, :4, got], atol=1e-4, rtol=0)
    assert len(keep) > 0 and suppressed > 0  # the check saw real suppression, not just thresholding


def test_onnx_backend_through_the_predictor_matches_the_eager_predictor(exported):
    """The export under the predictor's ONNX backend (what the served pyfunc and the latency bench
    run) gives the eager predictor's detections; settings changes keep the backend."""
    from cocoseg.export.bench import bench_image
    from cocoseg.inference import OnnxBackend, Predictor

    model, path, _ = exported
    predictor = Predictor(model, class_names=["a", "b", "c"], imgsz=IMGSZ, conf=0.3)
    onnx = Predictor(OnnxBackend(path.read_bytes(), threads=1), class_names=["a", "b", "c"], imgsz=IMGSZ, conf=0.3)
    images = [bench_image(IMGSZ), bench_image(IMGSZ)[:40, :50]]
    eager, got = predictor.predict(images), onnx.predict(images)  # a batch of 2 through the dynamic axis
    for e, g, image in zip(eager, got, images, strict=True):
        assert len(e) > 0 and g.classes.tolist() == e.classes.tolist()
        torch.testing.assert_close(g.scores, e.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(g.boxes_xyxy, e.boxes_xyxy, atol=1e-3, rtol=0)
        assert g.masks.shape == e.masks.shape == (len(e), *image.shape[:2])
        assert (g.masks != e.masks).float().mean() < 1e-3
    strict = onnx.with_settings(conf=0.5, max_det=2)
    assert strict.backend is onnx.backend and len(strict.predict(images[:1])[0]) <= 2
    with pytest.raises(Exception, match="fixed"):
        Predictor(onnx.backend, class_names=["a"], imgsz=IMGSZ * 2)


def test_nms_reference_suppresses_overlaps():
    boxes = torch.tensor([[[10.0, 10, 10, 10], [11, 10, 10, 10], [40, 40, 10, 10]]])  # cx, cy, w, h
    scores = torch.tensor([[[0.9, 0.8, 0.7]], ])  # one class
    keep = nms_reference(boxes, scores, 10, 0.5, 0.1)
    assert keep.tolist() == [[0, 0, 0], [0, 0, 2]]
    assert nms_reference(boxes, scores, 1, 0.5, 0.1).tolist() == [[0, 0, 0]]


def test_dynamic_hw_runs_other_multiples_of_32(tmp_path):
    model = TinySeg().eval()
    path = tmp_path / "hw.onnx"
    info = export_onnx(model, path, num_classes=3, imgsz=IMGSZ, dynamic_hw=True)
    assert info.input_shape == ["batch", 3, "height", "width"]
    x = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    pred, _ = _session(path).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = decode(model(x))[0].numpy()
    np.testing.assert_allclose(pred, ref, **TOLERANCES["pred"])


def test_bad_settings_and_contract_violations_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(opset=17)
    with pytest.raises(ExportError, match="opset 17"):
        export_onnx(TinySeg(), tmp_path / "a.onnx", num_classes=3, imgsz=IMGSZ, opset=17)
    with pytest.raises(ExportError, match=r"pred has shape \(1, 39, 84\), expected \(1, 119, A\)"):
        export_onnx(TinySeg(), tmp_path / "a.onnx", num_classes=83, imgsz=IMGSZ)


def _tamper(path) -> None:
    """Change one weight of the largest tensor of the ONNX file at ``path`` (in place)."""
    proto = onnx.load(str(path))
    weight = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(weight).copy()
    arr.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(arr, weight.name))
    onnx.save(proto, str(path))


def test_a_parity_failure_fails_the_export_and_commits_nothing(tmp_path, monkeypatch):
    from cocoseg.export import artifacts

    good = make_export(tmp_path / "exp")  # a finished export in the folder: a failed redo must not look finished
    real = artifacts.export_onnx

    def export_then_tamper(model, path, **kwargs):  # an exporter that writes a wrong graph
        info = real(model, path, **kwargs)
        _tamper(path)
        return info

    monkeypatch.setattr(artifacts, "export_onnx", export_then_tamper)
    with pytest.raises(ParityError, match="differs from the eager model"):
        make_export(good)
    with pytest.raises(BundleError):
        open_bundle(good)
    assert not (good / "export.json").exists() and not list(good.glob(".*.onnx"))


@pytest.mark.parametrize("failure", ["wrong numbers", "crash"])
def test_onnxslim_result_is_kept_only_if_it_passes_parity(tmp_path, monkeypatch, failure):
    from cocoseg.export import artifacts

    real = artifacts.slim_onnx

    def bad_slim(src, dst):  # stands in for an onnxslim that breaks (or chokes on) the graph
        if failure == "crash":
            raise RuntimeError("onnxslim could not fold a node")
        nodes = real(src, dst)
        _tamper(dst)
        return nodes

    monkeypatch.setattr(artifacts, "slim_onnx", bad_slim)
    root = make_export(tmp_path / "exp")
    onnx_info = read_card(root)["export"]["onnx"]
    assert not onnx_info["simplified"] and onnx_info["nodes"] == onnx_info["nodes_before_slim"]
    assert any("onnxslim result rejected" in note for note in onnx_info["notes"]), onnx_info["notes"]
    assert len(onnx.load(str(root / "model.onnx")).graph.node) == onnx_info["nodes_before_slim"]
    check_parity(TinySeg().eval(), root / "model.onnx", num_classes=3, imgsz=IMGSZ)  # the kept graph passes


def test_export_bundle_commits_manifest_card_and_skips_engine_plainly(tmp_path):
    root = make_export(tmp_path / "exp", formats=("onnx", "engine"))
    bundle = open_bundle(root)
    export = read_card(root)["export"]
    assert export["onnx"]["parity"]["max_abs"]["pred"] <= TOLERANCES["pred"]["atol"]
    assert export["onnx"]["simplified"] and export["onnx"]["nodes"] < export["onnx"]["nodes_before_slim"]
    assert export["engine"]["built"] is False and export["engine"]["reason"]
    assert not (root / "model.engine").exists() and not bundle.has("model.engine")
    assert bundle.sha256("model.onnx") == export["onnx"]["sha256"]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["config.yaml", "export.json", "metrics.json", "model.onnx", "model.safetensors", "model_card.json"])


def test_open_bundle_refuses_incomplete_or_altered_dirs(tmp_path):
    root = make_export(tmp_path / "exp")
    for name, change, message in (
            ("model_card.json", lambda p: p.unlink(), "model_card.json is missing"),
            ("model.onnx", lambda p: p.write_bytes(p.read_bytes() + b"x"), "does not match its SHA-256"),
            ("export.json", lambda p: p.unlink(), "not a finished export")):
        copy = shutil.copytree(root, tmp_path / f"copy-{name}")
        change(copy / name)
        with pytest.raises(BundleError, match=message):
            open_bundle(copy)
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "nowhere")


def test_latency_table_has_each_cpu_format(tmp_path):
    from cocoseg.export.bench import benchmark

    model = TinySeg().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, num_classes=3, imgsz=IMGSZ)
    table = benchmark(model, path, None, imgsz=IMGSZ, warmup=1, runs=3)
    assert [r["format"] for r in table["rows"]][:2] == ["torch eager", "onnxruntime"]
    assert all(r["median_ms"] > 0 for r in table["rows"]) and table["batch"] == 1
    assert table["rows"][0]["timed"] == table["rows"][1]["timed"]  # both through the one predictor
    assert "Predictor" in table["rows"][0]["timed"] and table["image_hw"] == [IMGSZ * 3 // 4, IMGSZ]
    json.dumps(table)


def test_dynamo_exporter_embeds_weights_or_says_what_is_missing(tmp_path):
    model = TinySeg().eval()
    path = tmp_path / "dynamo.onnx"
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="needs the 'onnxscript' package"):
            export_onnx(model, path, num_classes=3, imgsz=IMGSZ, exporter="dynamo")
        return
    export_onnx(model, path, num_classes=3, imgsz=IMGSZ, exporter="dynamo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamo.onnx"]
    check_parity(model, path, num_classes=3, imgsz=IMGSZ)
