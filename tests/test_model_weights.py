"""Checkpoints and reference import: parity with the reference outputs, the restricted
unpickler (a malicious pickle is refused and runs nothing), safetensors + model card round
trips on local disk and S3 (moto), and clear errors for bad input.

The reference checkpoint tests (``reference`` fixture: parity, the import CLI, a partial load
from the reference .pt) read ``yolov8n-seg-random.pt`` and its ``.io.npz`` from
``$COCOSEG_SHARED/reference`` (9.4 MB, not in the repository) and skip with the reason when it
is absent. Every other test here runs on a fresh clone: the state-dict listing is in
``tests/fixtures/reference``, and the other ``.pt`` files are written by the tests."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoseg.cli import main as cli_main
from cocoseg.model import (
    CheckpointError,
    ModelCard,
    build_model,
    decode,
    import_reference,
    load_checkpoint,
    load_weights,
    read_card,
    save_checkpoint,
)
from cocoseg.model.safe_unpickle import NotATorchArchiveError, UnsafePickleError, load_pt
from cocoseg.utils import UserError

# One thread: on the shared 2-core machine, 2 threads ran up to 20x slower under load (spin-waiting).
torch.set_num_threads(1)

REF_PT = "yolov8n-seg-random.pt"
REF_IO = "yolov8n-seg-random.io.npz"


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> Path:
    ref = reference_dir
    for name in (REF_PT, REF_IO):
        assert (ref / name).is_file(), f"{ref / name} is missing from the shared reference folder"
    return ref


@pytest.fixture(scope="module")
def imported(reference: Path):
    return import_reference((reference / REF_PT).read_bytes(), REF_PT)


def _parity(model: torch.nn.Module, reference: Path) -> tuple[float, float]:
    io_ = np.load(reference / REF_IO)
    with torch.no_grad():
        pred, proto = decode(model.eval()(torch.from_numpy(io_["input"])))
    assert pred.shape == io_["pred"].shape and proto.shape == io_["proto"].shape
    return (float((pred - torch.from_numpy(io_["pred"])).abs().max()),
            float((proto - torch.from_numpy(io_["proto"])).abs().max()))


def _state_dict_pt(path: Path, variant: str = "n", nc: int = 80) -> Path:
    """A ``.pt`` with a plain state dict in the reference's key layout (as ``torch.save`` writes it)."""
    torch.manual_seed(0)
    torch.save(build_model(variant, nc).state_dict(), path)
    return path


def test_state_dict_layout_is_the_reference(fixtures_dir: Path):
    """Keys, order, shapes and dtypes equal the reference's 417-entry list for yolov8n-seg."""
    listing = fixtures_dir / "reference" / "yolov8n-seg-state-dict.txt"
    rows = [line.rstrip("\n").split("\t") for line in listing.open()
            if line.strip() and not line.startswith("#")]
    with torch.device("meta"):
        state = build_model("n", 80).state_dict()
    ours = [[k, str(list(v.shape)).replace(" ", ""), str(v.dtype).removeprefix("torch."), str(v.numel())] for k, v in state.items()]
    assert len(rows) == 417
    assert ours == [[k, shape.replace(" ", ""), dtype, numel] for k, shape, dtype, numel in rows]


def test_reference_import_matches_reference_outputs(imported, reference: Path):
    state, card = imported
    assert (card.variant, card.num_classes, len(state)) == ("n", 80, 417)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    model = build_model(card.variant, card.num_classes)
    model.load_state_dict(state)  # strict: the reference key names are ours
    pred_err, proto_err = _parity(model, reference)
    print(f"parity vs reference: pred max abs err {pred_err:.3g}, proto {proto_err:.3g}")
    assert pred_err <= 1e-3
    assert proto_err <= 1e-4


def test_import_cli_then_load_checkpoint(cli, reference: Path, tmp_path: Path):
    dest = tmp_path / "ckpt"
    proc = cli("import-weights", reference / REF_PT, dest, env={"OMP_NUM_THREADS": "1"})
    assert "yolov8n-seg" in proc.stdout
    assert sorted(os.listdir(dest)) == ["model.safetensors", "model_card.json"]
    model, card = load_checkpoint(str(dest))
    assert card.variant == "n" and card.source.startswith(f"imported from {reference / REF_PT}")
    assert card.class_names[0] == "person"  # placeholder names in the file -> COCO names
    pred_err, proto_err = _parity(model, reference)
    assert pred_err <= 1e-3 and proto_err <= 1e-4


def test_load_weights_exact_and_partial(tmp_path: Path):
    """Warm start: exact from a checkpoint folder (or its safetensors path); partial (another
    class count) from a .pt, where only the class branch keeps its init (its width max(64, nc)
    also changes for the n variant)."""
    torch.manual_seed(0)
    source = build_model("n", 80)
    save_checkpoint(str(tmp_path / "ck"), source, ModelCard("n", 80, [str(i) for i in range(80)]))
    target = build_model("n", 80)
    assert load_weights(target, str(tmp_path / "ck" / "model.safetensors")) == []
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))
    three = build_model("n", 3)
    with pytest.raises(CheckpointError, match="do not fit yolov8n-seg with 3 classes"):
        load_weights(three, str(tmp_path / "ck"))
    pt = _state_dict_pt(tmp_path / "n80.pt")
    skipped = load_weights(three, str(pt), partial=True)
    assert "model.22.cv3.2.2.bias" in skipped and all(k.startswith("model.22.cv3.") for k in skipped)
    state = torch.load(pt, weights_only=True)
    loaded = three.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded if k not in skipped)


def test_load_weights_partial_from_the_reference_pt(reference: Path, imported):
    """The same partial warm start from the reference implementation's own .pt file."""
    three = build_model("n", 3)
    skipped = load_weights(three, str(reference / REF_PT), partial=True)
    assert "model.22.cv3.2.2.bias" in skipped and all(k.startswith("model.22.cv3.") for k in skipped)
    state, _ = imported
    loaded = three.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded if k not in skipped)


def test_checkpoint_round_trip_on_s3(s3_bucket: str):
    torch.manual_seed(0)
    model = build_model("n", 3)
    card = ModelCard(variant="n", num_classes=3, class_names=["a", "b", "c"], imgsz=320,
                     data_snapshot="snap-123", config_hash="abc", metrics={"mask_map50_95": 0.25})
    uri = f"{s3_bucket}/runs/r1/weights"
    save_checkpoint(uri, model, card)
    loaded, card2 = load_checkpoint(uri, num_classes=3)
    assert card2.to_dict() == card.to_dict()
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert read_card(uri).data_snapshot == "snap-123"


# --- malicious and malformed files ------------------------------------------------------------


class _Payload:
    """Pickles as a call of os.system (what a malicious checkpoint does on torch.load)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('os').system('false')",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    # A real torch.save archive whose pickle calls os.system while loading.
    torch.save({"model": _Payload(marker), "epoch": 1}, evil)
    data = evil.read_bytes()
    with pytest.raises(UnsafePickleError, match=r"evil\.pt.*(posix|os)\.system"):
        import_reference(data, str(evil))
    assert not marker.exists()
    # The same through the CLI entry point: one clear line, exit status 2, nothing ran.
    assert cli_main(["import-weights", str(evil), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cocoseg import-weights: error: ") and "refused" in err and str(evil) in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.save([_EvalPayload()], tmp_path / "eval.pt")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_pt((tmp_path / "eval.pt").read_bytes(), "eval.pt")
    # A bare (non-zip) pickle with the same payload is not even unpickled.
    with pytest.raises(NotATorchArchiveError, match="raw.pt"):
        load_pt(pickle.dumps(_Payload(marker)), "raw.pt")
    assert not marker.exists()


def test_foreign_classes_become_inert_stand_ins(tmp_path: Path):
    """A class of an allow-listed foreign namespace is never imported: an inert stand-in with
    the pickled state appears instead, even when it names a module that does not exist here."""
    class_ref = b"cultralytics.nn.tasks\nEvilModel\n"  # GLOBAL opcode
    payload = b"\x80\x02" + class_ref + b")\x81}X\x01\x00\x00\x00aK\x01sb."  # NEWOBJ + BUILD {'a': 1}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
    obj = load_pt(buf.getvalue(), "standin.pt")
    assert type(obj).foreign_name == "ultralytics.nn.tasks.EvilModel" and obj.a == 1
    assert not hasattr(obj, "forward")
    with pytest.raises(CheckpointError, match=r"standin\.pt.*not a YOLOv8-seg"):
        import_reference(buf.getvalue(), "standin.pt")


def test_bad_input_files(tmp_path: Path):
    data = _state_dict_pt(tmp_path / "n80.pt").read_bytes()
    # Truncated checkpoint.
    with pytest.raises(UserError, match="cut.pt.*(truncated|corrupt)"):
        import_reference(data[: len(data) // 2], "cut.pt")
    # Not a checkpoint at all.
    with pytest.raises(UserError, match=r"README\.md.*not a PyTorch checkpoint"):
        import_reference(b"# Notes\n\nA markdown file, not a checkpoint.\n", "README.md")
    # Another family: a detection model's state dict (no mask branches).
    state, _ = import_reference(data, "n80.pt")
    detect = {k: v for k, v in state.items() if ".proto." not in k and ".cv4." not in k}
    torch.save(detect, tmp_path / "detect.pt")
    with pytest.raises(CheckpointError, match=r"detect\.pt.*not a YOLOv8-seg"):
        import_reference((tmp_path / "detect.pt").read_bytes(), "detect.pt")
    # Same family, layout of no variant (a layer removed).
    broken = {k: v for k, v in state.items() if not k.startswith("model.2.m.0.")}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken\.pt.*missing"):
        import_reference((tmp_path / "broken.pt").read_bytes(), "broken.pt")


def test_bad_checkpoint_folders(tmp_path: Path):
    torch.manual_seed(0)
    good = tmp_path / "good"
    save_checkpoint(str(good), build_model("n", 3), ModelCard("n", 3, ["a", "b", "c"]))
    # Another class count than asked for.
    with pytest.raises(CheckpointError, match=r"good: checkpoint has 3 classes, expected 80"):
        load_checkpoint(str(good), num_classes=80)
    with pytest.raises(CheckpointError, match="expected 's'"):
        load_checkpoint(str(good), variant="s")
    # Truncated weights.
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "model_card.json").write_bytes((good / "model_card.json").read_bytes())
    blob = (good / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(CheckpointError, match=r"cut/model\.safetensors.*truncated or corrupt"):
        load_checkpoint(str(cut))
    # A card that lies about the class count: the tensors do not fit.
    liar = tmp_path / "liar"
    liar.mkdir()
    (liar / "model.safetensors").write_bytes(blob)
    card = json.loads((good / "model_card.json").read_text())
    card.update(num_classes=80, class_names=[str(i) for i in range(80)])
    (liar / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"liar/model\.safetensors.*do not fit yolov8n-seg with 80"):
        load_checkpoint(str(liar))
    # Another family in the card; not a checkpoint folder at all; malformed card.
    card.update(family="yolo11-seg")
    (liar / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="liar/model_card.json: model family 'yolo11-seg'"):
        load_checkpoint(str(liar))
    with pytest.raises(CheckpointError, match="model_card.json is missing"):
        load_checkpoint(str(tmp_path / "nothing"))
    (liar / "model_card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="liar/model_card.json: malformed JSON"):
        load_checkpoint(str(liar))


def test_cli_model_info_and_unknown_variant(capsys):
    assert cli_main(["model-info", "n", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 3_409_968 and info["gflops"] == pytest.approx(12.00, rel=0.01)
    assert cli_main(["model-info", "x"]) == 0
    text = capsys.readouterr().out
    assert "71,827,888" in text and "328.36" in text
    assert cli_main(["model-info", "q"]) == 2
    assert "unknown model variant 'q'" in capsys.readouterr().err


def test_modules_nested_thousands_deep_are_a_clear_error(tmp_path: Path, monkeypatch):
    """A hostile file can nest stand-in modules deeper than Python's recursion limit: a
    CheckpointError naming the file, not a RecursionError traceback."""
    import sys
    import types

    package, module = types.ModuleType("ultralytics"), types.ModuleType("ultralytics.fake")
    package.__path__ = []

    class Layer:  # pickled under the reference's namespace, read back as an inert stand-in
        pass

    Layer.__module__, Layer.__qualname__ = "ultralytics.fake", "Layer"
    module.Layer = Layer
    monkeypatch.setitem(sys.modules, "ultralytics", package)
    monkeypatch.setitem(sys.modules, "ultralytics.fake", module)
    root = current = Layer()
    for _ in range(3000):
        current._modules = {"0": Layer()}
        current = current._modules["0"]
    current._parameters = {"w": torch.zeros(1)}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        buf = io.BytesIO()
        torch.save({"model": root}, buf)
    finally:
        sys.setrecursionlimit(limit)
    monkeypatch.delitem(sys.modules, "ultralytics.fake")
    monkeypatch.delitem(sys.modules, "ultralytics")
    with pytest.raises(CheckpointError, match=r"deep\.pt: modules nested too deeply"):
        import_reference(buf.getvalue(), "deep.pt")
