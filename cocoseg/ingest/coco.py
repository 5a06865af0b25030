"""COCO-Seg sources: COCO instances JSON (via pycocotools) and the seed's YOLO labels.

Both readers turn a split into *records*, one per image, the unit that ingest workers validate
(:mod:`cocoseg.ingest.records`). A record is a plain dict (pickled to the ingest's shard tasks)::

    split, image_id, file_name, uri           # uri: where the image bytes are
    width, height                             # from the annotation file; -1 when unknown (YOLO)
    normalized                                # True: coordinates are 0..1 of the image size (YOLO)
    anns                                      # list of raw annotation dicts (COCO field names)
    size                                      # bytes of the image file (the listing; set by the source planner)

A raw annotation has COCO's fields: ``id``, ``category_id`` (the source id, or null when the
source class is unknown), ``bbox`` (xywh or null: derive it from the polygons), ``area`` (or
null: derive it), ``iscrowd``, ``segmentation`` (a list of polygon parts or an RLE dict).

Class maps: a source whose categories are COCO's (ids in 1..90 with COCO's names) maps onto the
80 contiguous COCO classes (:data:`cocoseg.structures.COCO91_TO_COCO80`) and back; any other
category set (e.g. a synthetic dataset) maps its ids, sorted, onto 0..K-1.

Problems found while building records (duplicate image ids, missing image files, annotations
of unknown images) become quarantine rows here; malformed JSON stops with :class:`IngestError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cocoseg.structures import COCO80_TO_COCO91, COCO91_TO_COCO80, COCO_CLASS_NAMES
from cocoseg.utils import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "ClassMap",
    "IngestError",
    "SplitRecords",
    "class_map_from_categories",
    "class_map_from_names",
    "coco_records",
    "load_coco",
    "parse_yolo_label",
    "stable_image_id",
    "yolo_records",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class IngestError(UserError):
    """Bad ingest input that stops the run (malformed JSON/YAML, no splits found, ...)."""


@dataclass(frozen=True)
class ClassMap:
    """Contiguous classes 0..K-1: ``names[k]`` and the source category id ``category_ids[k]``."""

    names: tuple[str, ...]
    category_ids: tuple[int, ...]

    @property
    def id_to_index(self) -> dict[int, int]:
        return {cid: k for k, cid in enumerate(self.category_ids)}


@dataclass
class SplitRecords:
    """The records of one split plus the rows it already quarantined (``QUARANTINE_SCHEMA``)."""

    name: str
    source_name: str
    records: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    images_read: int
    instances_read: int


COCO_CLASS_MAP = ClassMap(COCO_CLASS_NAMES, COCO80_TO_COCO91)


def class_map_from_categories(categories: Sequence[Mapping[str, Any]], name: str) -> ClassMap:
    """Class map of a COCO ``categories`` list (see the module docstring for the rule)."""
    try:
        pairs = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (KeyError, TypeError, ValueError):
        raise IngestError(f"{name}: every entry of 'categories' needs an integer 'id' and a 'name'") from None
    if not pairs:
        raise IngestError(f"{name}: 'categories' is empty")
    if len({cid for cid, _ in pairs}) != len(pairs):
        raise IngestError(f"{name}: 'categories' repeats a category id")
    if all(cid in COCO91_TO_COCO80 and COCO_CLASS_NAMES[COCO91_TO_COCO80[cid]] == nm for cid, nm in pairs):
        return COCO_CLASS_MAP
    return ClassMap(tuple(nm for _, nm in pairs), tuple(cid for cid, _ in pairs))


def class_map_from_names(names: Sequence[str]) -> ClassMap:
    """Class map of a YOLO dataset YAML's ``names``: COCO's 80 keep COCO ids, others get k+1."""
    names = tuple(names)
    if names == COCO_CLASS_NAMES:
        return COCO_CLASS_MAP
    return ClassMap(names, tuple(range(1, len(names) + 1)))


def load_coco(data: bytes, name: str):
    """Parse instances-JSON bytes into a pycocotools ``COCO`` (index built, banner silenced)."""
    from pycocotools.coco import COCO

    try:
        dataset = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise IngestError(f"{name}: malformed JSON{where}: {getattr(exc, 'msg', exc)}") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise IngestError(f"{name}: not a COCO instances file (expected an object with 'images', "
                          f"'annotations' and 'categories' lists)")
    for key in ("annotations", "categories"):
        if not isinstance(dataset.get(key, []), list):
            raise IngestError(f"{name}: '{key}' must be a list")
    coco = COCO()
    coco.dataset = dataset
    dataset.setdefault("annotations", [])
    # createIndex keys images by id, so duplicates must be found before (coco_records does).
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _reject(split: str, image_id: int | None, file_name: str, annotation_id: int | None,
            reason: str, detail: str) -> dict[str, Any]:
    return {"split": split, "image_id": image_id, "file_name": file_name, "annotation_id": annotation_id,
            "reason": reason, "detail": detail}


def coco_records(coco, split: str, source_name: str, image_uris: Mapping[str, str], json_name: str) -> SplitRecords:
    """Records of one COCO split.

    ``image_uris`` maps a file name relative to the split's image folder to its URI (the listing).
    Duplicate image ids (the later entries), images whose file is not listed, and annotations of
    unknown image ids are quarantined here.
    """
    records, rejects = [], []
    seen: set[int] = set()
    images = coco.dataset["images"]
    n_instances = len(coco.dataset["annotations"])
    for entry in images:
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
            width, height = int(entry.get("width", -1)), int(entry.get("height", -1))
        except (KeyError, TypeError, ValueError):
            raise IngestError(f"{json_name}: image entry {str(entry)[:120]} lacks an integer 'id' or a 'file_name'") from None
        anns = coco.imgToAnns.get(image_id, []) if image_id not in seen else []
        if image_id in seen:
            rejects.append(_reject(split, image_id, file_name, None, "duplicate_image_id",
                                   f"image id {image_id} appears more than once in {json_name}"))
            continue
        seen.add(image_id)
        uri = image_uris.get(file_name) or image_uris.get(posixpath.basename(file_name))
        if uri is None:
            rejects.append(_reject(split, image_id, file_name, None, "missing_file",
                                   f"{file_name} is listed in {json_name} but not found"))
            rejects.extend(_reject(split, image_id, file_name, int(a.get("id", -1)), "missing_file", "")
                           for a in anns)
            continue
        records.append({"split": split, "image_id": image_id, "file_name": file_name, "uri": uri,
                        "width": width, "height": height, "normalized": False,
                        "anns": list(anns)})
    for ann in coco.dataset["annotations"]:
        if ann.get("image_id") not in seen:
            rejects.append(_reject(split, None, "", int(ann.get("id", -1)), "orphan_annotation",
                                   f"annotation {ann.get('id')} refers to image id {ann.get('image_id')}, "
                                   f"which is not in {json_name}"))
    return SplitRecords(split, source_name, records, rejects, len(images), n_instances)


def stable_image_id(split: str, file_name: str) -> int:
    """Image id for a YOLO image: the numeric stem (COCO's own id) or a stable 40-bit hash."""
    stem = posixpath.splitext(posixpath.basename(file_name))[0]
    if stem.isdigit() and len(stem) <= 15:
        return int(stem)
    digest = hashlib.sha1(f"{split}/{file_name}".encode()).digest()
    return int.from_bytes(digest[:5], "big")


def parse_yolo_label(text: str, image_id: int, class_map: ClassMap) -> list[dict[str, Any]]:
    """One YOLO label file -> raw annotations with *normalised* polygon coordinates.

    A line is ``class x0 y0 x1 y1 ...`` (a polygon) or ``class cx cy w h`` (a box, kept as its
    rectangle). Annotation ids are ``image_id * 1000 + line number``. A line that does not parse
    keeps ``segmentation`` ``[[nan]]`` so validation rejects it as non-finite.
    """
    anns = []
    for line_no, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        parts = line.split()
        try:
            cls = int(float(parts[0]))
            values = [float(v) for v in parts[1:]]
        except ValueError:
            cls, values = -1, [math.nan]
        if len(values) == 4:
            cx, cy, w, h = values
            values = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]
        cat = class_map.category_ids[cls] if 0 <= cls < len(class_map.category_ids) else None
        anns.append({"id": image_id * 1000 + line_no, "category_id": cat, "source_class": cls, "bbox": None,
                     "area": None, "iscrowd": 0, "segmentation": [values]})
    return anns


def yolo_records(split: str, source_name: str, images: Mapping[str, str],
                       label_texts: Mapping[str, str], class_map: ClassMap) -> SplitRecords:
    """Records of one YOLO split.

    ``images`` maps file names (relative to ``images/<split>/``) to URIs; ``label_texts`` maps
    the same names to their label file text (absent: an image without instances).
    """
    records, rejects = [], []
    seen: set[int] = set()
    n_instances = 0
    for file_name in sorted(images):
        image_id = stable_image_id(split, file_name)
        anns = parse_yolo_label(label_texts.get(file_name, ""), image_id, class_map)
        n_instances += len(anns)
        if image_id in seen:
            rejects.append(_reject(split, image_id, file_name, None, "duplicate_image_id",
                                   f"{file_name} maps to image id {image_id}, already used in split {split}"))
            rejects.extend(_reject(split, image_id, file_name, a["id"], "duplicate_image_id", "") for a in anns)
            continue
        seen.add(image_id)
        records.append({"split": split, "image_id": image_id, "file_name": file_name, "uri": images[file_name],
                        "width": -1, "height": -1, "normalized": True,
                        "anns": list(anns)})
    return SplitRecords(split, source_name, records, rejects, len(images), n_instances)
