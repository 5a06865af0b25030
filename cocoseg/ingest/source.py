"""Find a COCO-Seg source's splits, classes and records, and fingerprint it.

A source is a folder (local or ``s3://``) or a dataset YAML (seed format). Layouts:

- COCO: ``<root>/annotations/instances_<name>.json`` with images under ``<root>/<name>/`` or
  ``<root>/images/<name>/`` (``name`` like ``train2017``); with a dataset YAML, split ``train``
  uses ``instances_<basename of its folder>.json`` and the YAML's image folder.
- YOLO: a dataset YAML + ``images/<split>/`` + ``labels/<split>/<stem>.txt``.

Split names are canonical in the snapshot: ``train2017`` -> ``train``, ``val2017`` -> ``val``.

The *source fingerprint* is a SHA-256 over the listing of the image folders used (relative
path, size and modification time of every file) and the full bytes of every annotation file
read, so a rerun on an unchanged source finds the same snapshot id, and any added, removed,
resized or rewritten image or any annotation edit gives a new one. (Hashing every image's bytes
would read the whole dataset just to find out that nothing changed.)
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cocoseg import storage
from cocoseg.config import DatasetSpec, dataset_spec_from_text

from .coco import (
    IMAGE_SUFFIXES,
    ClassMap,
    IngestError,
    SplitRecords,
    class_map_from_categories,
    class_map_from_names,
    coco_records,
    load_coco,
    yolo_records,
)

__all__ = ["SourcePlan", "canonical_split", "plan_source"]

_ANN_RE = re.compile(r"^annotations/instances_(?P<name>[^/]+)\.json$")


@dataclass
class SourcePlan:
    """Everything ingest needs to know about a source before any image is read."""

    source: str
    root: str
    layout: str  # "coco" or "yolo"
    class_map: ClassMap
    splits: list[SplitRecords]
    fingerprint: str
    files_ignored: int = 0
    notes: list[str] = field(default_factory=list)


def canonical_split(name: str) -> str:
    """``train2017`` -> ``train``; names that are not train/val/test(+year) stay as they are."""
    m = re.match(r"^(train|val|test)(\d{4})?$", name)
    return m.group(1) if m else name


Listing = dict[str, storage.FileEntry]


def _listing(root: str) -> Listing:
    """``{path relative to root (posix): FileEntry}`` of every file under ``root``."""
    base = storage.filesystem(root)[1].rstrip("/")
    out = {}
    for entry in storage.list_files(root):  # (one filesystem() call per file was ~10 % of planning)
        path = entry.uri[len("s3://"):] if storage.is_s3(entry.uri) else entry.uri
        out[path[len(base):].lstrip("/").replace(os.sep, "/")] = entry
    return out


def _is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_SUFFIXES)


def _images_under(listing: Listing, folder: str) -> Listing:
    prefix = folder.strip("/") + "/"
    return {rel[len(prefix):]: e for rel, e in listing.items() if rel.startswith(prefix) and _is_image(rel)}


def _read_spec(source: str) -> DatasetSpec:
    try:
        text = storage.read_text(source)
    except FileNotFoundError:
        raise IngestError(f"dataset YAML {source} does not exist") from None
    base = posixpath.dirname(source) if storage.is_s3(source) else os.path.dirname(os.path.abspath(source))
    return dataset_spec_from_text(text, source, base_dir=base)


def _root_yaml(root: str, listing: Listing) -> str | None:
    top = sorted(rel for rel in listing if "/" not in rel and rel.endswith((".yaml", ".yml")))
    return storage.join(root, top[0]) if top else None


def _wanted(name: str, wanted: tuple[str, ...]) -> bool:
    return not wanted or name in wanted or canonical_split(name) in wanted


def plan_source(source: str, layout: str = "auto", splits: tuple[str, ...] = ()) -> SourcePlan:
    """List and parse a source (folder, ``s3://`` prefix or dataset YAML) into a :class:`SourcePlan`."""
    source = str(source).rstrip("/")
    spec = _read_spec(source) if source.endswith((".yaml", ".yml")) else None
    root = spec.path if spec else source
    if not root:
        raise IngestError(f"{source}: cannot tell the dataset root ('path' is empty)")
    listing = _listing(root)
    if not listing:
        raise IngestError(f"no files under {root}: check the source path, ingest.source (and AWS_ENDPOINT_URL for s3://)")
    jsons = {m["name"]: rel for rel in listing if (m := _ANN_RE.match(rel))}
    if spec is None and not jsons and layout != "coco":
        yaml_uri = _root_yaml(root, listing)
        if yaml_uri is None:
            raise IngestError(f"{root}: no annotations/instances_<split>.json (COCO layout) and no dataset YAML "
                              f"(YOLO layout) found")
        spec, source = _read_spec(yaml_uri), yaml_uri
        root = spec.path or root
    if spec is not None:
        folders = {name: folder for name, folder in spec.splits.items() if _wanted(name, splits)}
        has_json = all(f"instances_{posixpath.basename(f.rstrip('/'))}" in {f"instances_{n}" for n in jsons}
                       for f in folders.values())
        use_coco = layout == "coco" or (layout == "auto" and has_json and bool(jsons))
        plan = (_plan_coco_yaml(root, listing, folders, jsons) if use_coco
                else _plan_yolo(root, listing, folders, spec))
    else:
        if layout == "yolo":
            raise IngestError(f"{source}: the YOLO layout needs a dataset YAML for the class names; pass the YAML as SOURCE")
        plan = _plan_coco_folder(root, listing, {n: r for n, r in jsons.items() if _wanted(n, splits)})
    if not plan.splits:
        raise IngestError(f"{source}: none of the requested splits {list(splits)} exist in this source; set "
                          "ingest.splits to some of its splits (or [] for all)")
    plan.source = source
    return plan


def _coco_split(root: str, listing: Listing, name: str, folder: str, json_rel: str,
                hasher) -> tuple[SplitRecords, ClassMap, Listing]:
    json_uri = storage.join(root, json_rel)
    data = storage.read_bytes(json_uri)
    hasher.update(f"json:{json_rel}:".encode() + hashlib.sha256(data).digest())
    coco = load_coco(data, json_uri)
    class_map = class_map_from_categories(coco.dataset.get("categories", []), json_uri)
    images = _images_under(listing, folder)
    uris = {rel: storage.join(root, *f"{folder}/{rel}".split("/")) for rel in images}
    split = coco_records(coco, canonical_split(name), name, uris, json_uri)
    _attach_sizes(split, uris, images)
    return split, class_map, images


def _attach_sizes(split: SplitRecords, uris: dict[str, str], images: Listing) -> None:
    """Give every record the ``size`` (bytes) of its file from the listing: ingest cuts shards on it."""
    size_of = {uris[rel]: e.size for rel, e in images.items()}
    for rec in split.records:
        rec["size"] = int(size_of.get(rec["uri"], 0))


def _finish(root: str, layout: str, hasher, parts, used_images: int, total_images: int) -> SourcePlan:
    maps = {cm for _, cm in parts}
    if len(maps) > 1:
        raise IngestError(f"{root}: the splits disagree on their categories; they must share one class list")
    split_list = [s for s, _ in parts]
    names = [s.name for s in split_list]
    if len(set(names)) != len(names):
        raise IngestError(f"{root}: two source splits map to the same snapshot split ({names})")
    class_map = maps.pop() if maps else class_map_from_names(())
    return SourcePlan(source=root, root=root, layout=layout, class_map=class_map, splits=split_list,
                      fingerprint=hasher.hexdigest(), files_ignored=total_images - used_images)


def _hash_listing(hasher, folder: str, images: Listing) -> None:
    for rel in sorted(images):
        hasher.update(f"img:{folder}/{rel}:{images[rel].size}:{images[rel].mtime_ns}\n".encode())


def _plan_coco_folder(root: str, listing: Listing, jsons: dict[str, str]) -> SourcePlan:
    hasher, parts, used = hashlib.sha256(b"coco\n"), [], 0
    for name in sorted(jsons):
        folder = name if _images_under(listing, name) else f"images/{name}"
        split, class_map, images = _coco_split(root, listing, name, folder, jsons[name], hasher)
        _hash_listing(hasher, folder, images)
        parts.append((split, class_map))
        used += len(images)
    return _finish(root, "coco", hasher, parts, used, sum(map(_is_image, listing)))


def _plan_coco_yaml(root: str, listing: Listing, folders: dict[str, str], jsons: dict[str, str]) -> SourcePlan:
    hasher, parts, used = hashlib.sha256(b"coco\n"), [], 0
    for name, folder in folders.items():
        folder = folder.strip("/")
        key = posixpath.basename(folder)
        if key not in jsons:
            raise IngestError(f"{root}: split {name!r} needs annotations/instances_{key}.json")
        split, class_map, images = _coco_split(root, listing, key, folder, jsons[key], hasher)
        split.name, split.source_name = canonical_split(name), key
        for rec in split.records + split.rejects:
            rec["split"] = split.name
        _hash_listing(hasher, folder, images)
        parts.append((split, class_map))
        used += len(images)
    return _finish(root, "coco", hasher, parts, used, sum(map(_is_image, listing)))


def _labels_folder(folder: str) -> str:
    parts = folder.strip("/").split("/")
    if "images" not in parts:
        raise IngestError(f"YOLO image folder {folder!r} has no 'images' component to map onto 'labels'")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return "/".join(parts)


def _plan_yolo(root: str, listing: Listing, folders: dict[str, str], spec: DatasetSpec) -> SourcePlan:
    hasher, parts, used = hashlib.sha256(b"yolo\n"), [], 0
    class_map = class_map_from_names(spec.names)
    hasher.update("\n".join(spec.names).encode())
    for name, folder in folders.items():
        folder = folder.strip("/")
        images = _images_under(listing, folder)
        labels_dir = _labels_folder(folder)
        wanted = {rel: f"{labels_dir}/{posixpath.splitext(rel)[0]}.txt" for rel in images}
        present = {rel: lbl for rel, lbl in wanted.items() if lbl in listing}
        with ThreadPoolExecutor(16) as pool:
            texts = dict(zip(present, pool.map(lambda lbl: storage.read_text(storage.join(root, lbl)),
                                               present.values()), strict=True))
        for rel in sorted(texts):
            hasher.update(f"lbl:{rel}:".encode() + hashlib.sha256(texts[rel].encode()).digest())
        _hash_listing(hasher, folder, images)
        uris = {rel: storage.join(root, *f"{folder}/{rel}".split("/")) for rel in images}
        split = yolo_records(canonical_split(name), name, uris, texts, class_map)
        _attach_sizes(split, uris, images)
        parts.append((split, class_map))
        used += len(images)
    return _finish(root, "yolo", hasher, parts, used, sum(map(_is_image, listing)))
