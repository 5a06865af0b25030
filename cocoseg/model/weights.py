"""Checkpoints: safetensors weights plus a JSON model card, and import of reference ``.pt`` files.

A cocoseg checkpoint is a folder (local path or ``s3://`` URI) holding

- ``model.safetensors``: the model's state dict (reference key names, float32), with
  ``format``/``variant``/``num_classes`` in the safetensors metadata so the file alone says
  what it is;
- ``model_card.json``: :class:`ModelCard`, written last (its presence commits the checkpoint).

No pickles: loading a checkpoint never executes code. Reference ``.pt`` files are read by
:mod:`cocoseg.model.safe_unpickle` and converted by :func:`import_reference`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cocoseg import __version__, storage
from cocoseg.structures import COCO_CLASS_NAMES
from cocoseg.utils import UserError, git_commit

from .safe_unpickle import ForeignObject, load_pt
from .yolov8 import VARIANTS, SegmentationModel, build_model

__all__ = [
    "CARD_FILE",
    "FAMILY",
    "WEIGHTS_FILE",
    "CheckpointError",
    "ModelCard",
    "import_reference",
    "load_checkpoint",
    "load_weights",
    "read_card",
    "read_checkpoint",
    "save_checkpoint",
]

FAMILY = "yolov8-seg"
FORMAT = "cocoseg-yolov8-seg"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
MARKER_FILE = "checkpoint.json"  # the commit marker of folders written by training (engine.checkpoint)
CARD_VERSION = 1

# How images must be prepared for the model; travels with the weights (spec sections 1, 11).
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "color": "RGB",
    "layout": "NCHW",
    "dtype": "float32",
    "scale": "uint8 / 255 -> [0, 1]",
    "letterbox": {
        "resize": "long side to imgsz, aspect ratio kept, bilinear",
        "pad_to": "imgsz x imgsz (or the smallest multiple of 32 per side in rect mode)",
        "pad_value": [114, 114, 114],
        "center": True,
        "stride": 32,
    },
}


class CheckpointError(UserError):
    """A checkpoint (weights file or training-state folder, local or ``s3://``) that is missing,
    incomplete, unreadable or does not fit the model asked for. The one such error in cocoseg."""


@dataclass
class ModelCard:
    """What a set of weights is and how to feed it (style rule 9)."""

    variant: str
    num_classes: int
    class_names: list[str]
    imgsz: int = 640
    preprocessing: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_PREPROCESSING)))
    data_snapshot: str = ""
    config_hash: str = ""
    code_version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    source: str = ""
    created_utc: str = ""
    # Written by cocoseg.export: ONNX signature, TensorRT/CUDA versions, GPU and build facts.
    export: dict[str, Any] = field(default_factory=dict)
    family: str = FAMILY
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if not self.code_version:
            self.code_version = f"cocoseg {__version__} ({git_commit()})"
        if not self.created_utc:
            self.created_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelCard:
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: a model card must be a JSON object")
        if data.get("family") != FAMILY:
            raise CheckpointError(f"{where}: model family {data.get('family')!r} is not {FAMILY!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(n for n in ("variant", "num_classes", "class_names") if n not in data)
        if unknown or missing:
            raise CheckpointError(f"{where}: model card has unknown fields {unknown} / lacks {missing}")
        card = cls(**data)
        if not isinstance(card.num_classes, int) or not isinstance(card.class_names, list):
            raise CheckpointError(f"{where}: num_classes must be an integer and class_names a list")
        if card.variant not in VARIANTS:
            raise CheckpointError(f"{where}: unknown variant {card.variant!r} (expected one of {', '.join(VARIANTS)})")
        if len(card.class_names) != card.num_classes:
            raise CheckpointError(f"{where}: {len(card.class_names)} class names for {card.num_classes} classes")
        return card


def default_class_names(num_classes: int) -> list[str]:
    return list(COCO_CLASS_NAMES) if num_classes == len(COCO_CLASS_NAMES) else [f"class{i}" for i in range(num_classes)]


# ------------------------------------------------------------------------------------------
# cocoseg checkpoints


def save_checkpoint(dest: str, model: SegmentationModel, card: ModelCard) -> str:
    """Write ``model.safetensors`` then ``model_card.json`` under ``dest`` (folder or s3:// URI).

    The model must be unfused (its state dict has the reference keys). Returns ``dest``.
    """
    if (card.variant, card.num_classes) != (model.variant, model.num_classes):
        raise CheckpointError(f"{dest}: card says {card.variant}/{card.num_classes} classes but the model is "
                              f"{model.variant}/{model.num_classes} classes")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    expected = set(build_model_meta(model.variant, model.num_classes).state_dict())
    if set(state) != expected:
        raise CheckpointError(f"{dest}: the model's state dict does not have the reference keys (fused model?)")
    metadata = {"format": FORMAT, "variant": card.variant, "num_classes": str(card.num_classes)}
    storage.makedirs(dest)
    storage.write_bytes(storage.join(dest, WEIGHTS_FILE), st_save(state, metadata=metadata))
    storage.write_json(storage.join(dest, CARD_FILE), card.to_dict())
    return dest


def read_card(src: str) -> ModelCard:
    """The model card of the checkpoint folder ``src``."""
    uri = storage.join(src, CARD_FILE)
    try:
        data = storage.read_json(uri)
    except FileNotFoundError:
        raise CheckpointError(f"{src}: not a cocoseg checkpoint ({CARD_FILE} is missing)") from None
    except ValueError as exc:
        raise CheckpointError(f"{uri}: {exc}") from None
    try:
        return ModelCard.from_dict(data, uri)
    except TypeError as exc:
        raise CheckpointError(f"{uri}: malformed model card: {exc}") from None


def _checkpoint_dir(src: str) -> str:
    """Accept the folder or the path of its ``model.safetensors`` / ``model_card.json``."""
    src = str(src).rstrip("/")
    for name in (WEIGHTS_FILE, CARD_FILE):
        if src.endswith("/" + name):
            return src[: -len(name) - 1]
    return src


def read_checkpoint(src: str) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state dict as saved, card) of a checkpoint folder, checked against its own card."""
    src = _checkpoint_dir(src)
    card = read_card(src)
    uri = storage.join(src, WEIGHTS_FILE)
    try:
        blob = storage.read_bytes(uri)
    except FileNotFoundError:
        raise CheckpointError(f"{uri}: weights file is missing") from None
    _check_marker(src, blob)
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{uri}: not a readable safetensors file (truncated or corrupt): {exc}") from None
    _check_state_dict(state, build_model_meta(card.variant, card.num_classes), uri)
    return state, card


def _check_marker(src: str, blob: bytes) -> None:
    """A folder written by training (``weights/last``, a checkpoint) carries a commit marker
    listing its files' SHA-256: weights that differ from it are from a copy cut short."""
    try:
        listed = storage.read_json(storage.join(src, MARKER_FILE)).get("files", {})
    except (FileNotFoundError, ValueError, AttributeError):
        return  # plain model folders (imports, exports) have no marker
    meta = listed.get(WEIGHTS_FILE) if isinstance(listed, dict) else None
    if meta and storage.sha256(blob) != meta.get("sha256"):
        raise CheckpointError(f"{storage.join(src, WEIGHTS_FILE)} does not match {MARKER_FILE}: the folder "
                              "was not written whole (an interrupted copy); use another checkpoint")


def load_checkpoint(src: str, *, num_classes: int | None = None, variant: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[SegmentationModel, ModelCard]:
    """Load a cocoseg checkpoint folder (local or ``s3://``) -> (model in eval mode, card).

    ``num_classes`` / ``variant``, when given, must match the checkpoint (a
    :class:`CheckpointError` naming the file says otherwise).
    """
    src = _checkpoint_dir(src)
    card = read_card(src)
    if num_classes is not None and card.num_classes != num_classes:
        raise CheckpointError(f"{src}: checkpoint has {card.num_classes} classes, expected {num_classes}")
    if variant is not None and card.variant != variant:
        raise CheckpointError(f"{src}: checkpoint is variant {card.variant!r}, expected {variant!r}")
    state, card = read_checkpoint(src)
    model = build_model(card.variant, card.num_classes)
    model.load_state_dict(state)
    return model.to(device).eval(), card


def load_weights(model: SegmentationModel, src: str, *, partial: bool = False) -> list[str]:
    """Initialise ``model`` in place from a cocoseg checkpoint folder or a reference ``.pt``.

    With ``partial=False`` the weights must fit exactly (same variant and class count). With
    ``partial=True`` (fine-tuning to other classes) every tensor whose key and shape match is
    loaded and the rest keep their initialisation; returns the keys that were not loaded.
    """
    if str(src).endswith(".pt"):
        state, _ = import_reference(storage.read_bytes(src), src)
    else:
        state, _ = read_checkpoint(src)
    if not partial:
        _check_state_dict(state, model, src)
        model.load_state_dict(state)
        return []
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"{src}: no tensor fits yolov8{model.variant}-seg (another family or variant?)")
    model.load_state_dict(usable, strict=False)
    return [k for k in own if k not in usable]


def build_model_meta(variant: str, num_classes: int) -> SegmentationModel:
    """Shapes only (meta device): cheap reference for key/shape checks."""
    with torch.device("meta"):
        return build_model(variant, num_classes)


def _state_dict_differences(state: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[list[str], ...]:
    """(missing keys, unexpected keys, "key shape != expected" lines) of ``state`` vs ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    return missing, extra, wrong


def _check_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module, where: str) -> None:
    """Same keys and shapes as ``model``'s state dict, or a CheckpointError that lists the first
    differences (a checkpoint of another family, variant or class count ends here)."""
    missing, extra, wrong = _state_dict_differences(state, model)
    if missing or extra or wrong:
        what = getattr(model, "variant", "?"), getattr(model, "num_classes", "?")
        raise CheckpointError(
            f"{where}: weights do not fit yolov8{what[0]}-seg with {what[1]} classes: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]})")


def _identify_variant(state: dict[str, torch.Tensor], num_classes: int, declared: Any, where: str) -> str:
    """The variant whose state dict ``state`` fits exactly; the declared one when the file names
    one, else the closest of all (whose differences the error lists)."""
    candidates = [declared] if declared in VARIANTS else list(VARIANTS)
    models = {v: build_model_meta(v, num_classes) for v in candidates}
    distance = {v: sum(map(len, _state_dict_differences(state, m))) for v, m in models.items()}
    best = min(candidates, key=distance.__getitem__)
    _check_state_dict(state, models[best], where)
    return best


# ------------------------------------------------------------------------------------------
# Reference (.pt) import


def _module_state_dict(module: ForeignObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a stand-in ``nn.Module`` tree into a state dict (parameters, persistent buffers)."""
    attrs = module.__dict__
    out: dict[str, torch.Tensor] = {}
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (attrs.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor) and name not in skip:
                out[prefix + name] = tensor
    for name, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, ForeignObject):
            out.update(_module_state_dict(child, f"{prefix}{name}."))
    return out


def _class_names(names: Any, num_classes: int) -> list[str]:
    """The checkpoint's names when it has a real one per class; placeholder names ("0", "1",
    ... as the reference writes for a model never trained on a dataset) carry no information, so
    the defaults (COCO names for 80 classes) are used instead."""
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or sorted(names) != list(range(num_classes)):
        return default_class_names(num_classes)
    listed = [str(names[i]) for i in range(num_classes)]
    return default_class_names(num_classes) if listed == [str(i) for i in range(num_classes)] else listed


def _pick_model(obj: Any, name: str) -> ForeignObject | dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj  # a bare state dict
    if isinstance(obj, dict):  # the reference's checkpoint dict: final weights in "model", EMA in "ema"
        for key in ("model", "ema"):
            if isinstance(obj.get(key), ForeignObject):
                return obj[key]
        raise CheckpointError(f"{name}: checkpoint dict without a model object (keys: {sorted(map(str, obj))[:8]})")
    if isinstance(obj, ForeignObject):
        return obj
    raise CheckpointError(f"{name}: holds a {type(obj).__name__}, not a model checkpoint")


def import_reference(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """A reference YOLOv8-seg ``.pt`` (bytes) -> (float32 state dict for :func:`build_model`, card).

    The pickle is read by the restricted unpickler (nothing in it runs). The variant comes from
    the checkpoint's own description when present and is then checked against every tensor
    shape; detection models, other families and other layouts are refused with a
    :class:`CheckpointError` naming ``name``.
    """
    top = load_pt(data, name)
    model_obj = _pick_model(top, name)
    if isinstance(model_obj, dict):
        foreign, meta, raw_state = "state dict", {}, model_obj
    else:
        try:
            raw_state = _module_state_dict(model_obj)
        except RecursionError:  # a hostile or broken file nesting modules thousands deep
            raise CheckpointError(f"{name}: modules nested too deeply to be a YOLOv8-seg checkpoint") from None
        foreign, meta = model_obj.foreign_name, model_obj.__dict__
    state = {str(k): v.float() if v.is_floating_point() else v for k, v in raw_state.items()}
    if not any(k.startswith("model.22.proto.") for k in state):
        raise CheckpointError(f"{name}: a {foreign} without mask prototypes is not a YOLOv8-seg checkpoint "
                              "(detection or another family?)")
    cls_key = "model.22.cv3.0.2.weight"
    if cls_key not in state:
        raise CheckpointError(f"{name}: {cls_key} is missing: not a YOLOv8-seg checkpoint")
    num_classes = int(state[cls_key].shape[0])
    yaml_info = meta.get("yaml") if isinstance(meta.get("yaml"), dict) else {}
    variant = _identify_variant(state, num_classes, yaml_info.get("scale"), name)
    class_names = _class_names(meta.get("names"), num_classes)
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    imgsz = args.get("imgsz", 640)
    version = top.get("version", "?") if isinstance(top, dict) else "?"
    card = ModelCard(variant=variant, num_classes=num_classes, class_names=class_names,
                     imgsz=int(imgsz) if isinstance(imgsz, int) else 640,
                     source=f"imported from {name} (reference implementation {version}, {foreign})")
    return state, card
