"""What changed between two snapshots: images added, removed and changed, instances per class.

An image is identified by ``<split>/<file_name>`` (the source's path; an image moved to another
split counts as removed there and added here) and compared by a SHA-256 over its encoded bytes
and its annotations (class, box, polygons, crowd RLE), so a re-labelled image is "changed" even
when its pixels are not. Reads every row of both snapshots once, one row group at a time.

Layer L1: imports only L0 modules of cocoseg and :mod:`.schema`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from .schema import iter_split_batches, read_manifest

__all__ = ["diff_snapshots", "image_digests"]

_COLUMNS = ["image_id", "file_name", "image", "annotations"]


def _digest(image: bytes, annotations: list[dict[str, Any]]) -> str:
    h = hashlib.sha256(image)
    labels = [(a["category"], [round(float(v), 3) for v in a["bbox_xywh"]], a["iscrowd"], a["polygons"],
               a["rle_counts"]) for a in annotations]
    h.update(json.dumps(labels, sort_keys=True, default=str).encode())
    return h.hexdigest()


def image_digests(snapshot: str) -> tuple[dict[str, tuple[int, str]], dict[str, Counter]]:
    """({"split/file_name": (image_id, digest)}, {split: Counter(class index -> instances)})."""
    manifest = read_manifest(snapshot)
    images: dict[str, tuple[int, str]] = {}
    instances: dict[str, Counter] = {}
    for split in manifest.splits:
        counts = instances.setdefault(split, Counter())
        for table in iter_split_batches(snapshot, split, columns=_COLUMNS, batch_rows=256):
            for row in table.to_pylist():
                images[f"{split}/{row['file_name']}"] = (int(row["image_id"]), _digest(row["image"], row["annotations"]))
                counts.update(int(a["category"]) for a in row["annotations"])
    return images, instances


def _per_class(instances: dict[str, Counter], names: list[str]) -> dict[str, int]:
    total = sum(instances.values(), Counter())
    return {names[k] if k < len(names) else str(k): int(total.get(k, 0)) for k in range(max(len(names), 1 + max(total, default=-1)))}


def diff_snapshots(old: str, new: str, *, examples: int = 10) -> dict[str, Any]:
    """The difference from snapshot ``old`` to ``new`` (URIs). Returns a JSON-able document:
    ``added`` / ``removed`` / ``changed`` / ``unchanged`` image counts, the same ``by_split``,
    ``instances_before`` / ``instances_after`` ({class name: instances}, all splits),
    ``instances_by_split``, ``new_or_changed`` ({split: image ids in ``new``}) and a few example names."""
    before, inst_before = image_digests(old)
    after, inst_after = image_digests(new)
    new_manifest, old_manifest = read_manifest(new), read_manifest(old)
    names = list(new_manifest.class_names or old_manifest.class_names)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(after) & set(before) if after[k][1] != before[k][1])
    splits = sorted({k.split("/", 1)[0] for k in (*before, *after)})
    by_split = {s: {"added": sum(k.startswith(f"{s}/") for k in added),
                    "removed": sum(k.startswith(f"{s}/") for k in removed),
                    "changed": sum(k.startswith(f"{s}/") for k in changed)} for s in splits}
    fresh: dict[str, list[int]] = {}
    for key in (*added, *changed):
        fresh.setdefault(key.split("/", 1)[0], []).append(after[key][0])
    return {"old_snapshot": old_manifest.snapshot_id, "new_snapshot": new_manifest.snapshot_id,
            "added": len(added), "removed": len(removed), "changed": len(changed),
            "unchanged": len(after) - len(added) - len(changed), "by_split": by_split,
            "instances_before": _per_class(inst_before, names), "instances_after": _per_class(inst_after, names),
            "instances_by_split": {"before": {s: _per_class({s: c}, names) for s, c in inst_before.items()},
                                   "after": {s: _per_class({s: c}, names) for s, c in inst_after.items()}},
            "new_or_changed": {s: sorted(v) for s, v in fresh.items()},
            "examples": {"added": added[:examples], "removed": removed[:examples], "changed": changed[:examples]}}
