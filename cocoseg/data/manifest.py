"""The snapshot manifest as typed, frozen records: :class:`Manifest`, its :class:`SplitEntry` s and
their :class:`ShardEntry` s.

On disk the manifest is ``<snapshot>/_manifest.json``, a JSON object whose keys are the fields
below in this order (:meth:`Manifest.to_json`); :meth:`Manifest.from_json` reads it back, including
manifests written before a field existed (older snapshots have no per-split ``stats``). Keys this
code does not know are kept (``extra``) and written back, so a manifest ingest wrote round-trips
to the same text (:func:`dumps_manifest`).
``cocoseg.data.schema.read_manifest`` is the reader every stage calls.

Layer L1: imports only L0 modules of cocoseg.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cocoseg.utils import UserError

__all__ = ["Manifest", "ManifestError", "ShardEntry", "SplitEntry", "dumps_manifest"]


class ManifestError(UserError):
    """A manifest document that lacks a key every snapshot has, or holds one of the wrong type."""


def _frozen(value: Any) -> Any:
    """JSON value -> read-only: objects become mapping proxies, arrays tuples (recursively)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """The inverse of :func:`_frozen`: plain dicts and lists, as ``json`` writes them."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class ShardEntry:
    """One Parquet shard: ``path`` relative to the snapshot (``/``-separated), ``rows`` images,
    ``bytes`` its size on storage."""

    path: str
    rows: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes}


@dataclass(frozen=True)
class SplitEntry:
    """One split: ``images`` / ``annotations`` written, its ``shards`` in order, and ``stats``,
    the per-class counts of :mod:`cocoseg.data.class_stats` (``empty_images``,
    ``crowd_instances``, ``classes`` -> column -> per-class list), None for snapshots ingested
    before they existed. ``source_split``: the split's name in the source."""

    source_split: str
    images: int
    annotations: int
    shards: tuple[ShardEntry, ...]
    stats: Mapping[str, Any] | None = None

    def __reduce__(self) -> tuple[Any, ...]:  # mapping proxies do not pickle; Ray and copy pickle
        return _split, (self.to_json(),)

    def to_json(self) -> dict[str, Any]:
        out = {"source_split": self.source_split, "images": self.images, "annotations": self.annotations,
               "shards": [s.to_json() for s in self.shards]}
        if self.stats is not None:
            out["stats"] = _thawed(self.stats)
        return out


# The keys after ``splits``: each may be absent from an older manifest (the field's default then).
_OPTIONAL = ("quarantined", "counts", "settings", "created_at", "duration_s", "cocoseg_version", "git_commit")


@dataclass(frozen=True)
class Manifest:
    """What ingest committed: identity, source, classes, splits, counts and provenance.

    ``class_names[k]`` / ``category_ids[k]``: name and source category id of contiguous class
    ``k``; ``splits``: name -> :class:`SplitEntry` in ingest order; ``quarantined``: reason ->
    ``{"images": n, "instances": n}``; ``counts``: ``images_read`` / ``_written`` /
    ``_quarantined`` and the same for ``instances``; ``settings``: the ingest settings that
    shaped the snapshot; ``duration_s``: seconds the ingest took. ``snapshot_uri`` is where the
    manifest was read from (not stored); ``extra``: keys of the document this code does not know.
    """

    snapshot_id: str
    schema_version: int
    source: str
    layout: str
    source_fingerprint: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    splits: Mapping[str, SplitEntry]
    quarantined: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: MappingProxyType({}))
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    created_at: str = ""
    duration_s: float | None = None
    cocoseg_version: str = ""
    git_commit: str = ""
    snapshot_uri: str = ""
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], snapshot_uri: str = "", *, where: str = "manifest") -> Manifest:
        """A manifest document (``json.load`` of ``_manifest.json``) -> :class:`Manifest`.

        ``where`` names the file in errors: a missing or mistyped required key is one
        :class:`ManifestError` line naming it.
        """
        if not isinstance(doc, Mapping):
            raise ManifestError(f"{where}: not a JSON object")
        try:
            splits = {name: _split(entry) for name, entry in (doc.get("splits") or {}).items()}
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(
                snapshot_id=str(doc["snapshot_id"]), schema_version=int(doc["schema_version"]),
                source=str(doc.get("source", "")), layout=str(doc.get("layout", "?")),
                source_fingerprint=str(doc.get("source_fingerprint", "")),
                class_names=tuple(str(n) for n in doc["class_names"]),
                category_ids=tuple(int(c) for c in doc["category_ids"]),
                splits=MappingProxyType(splits),
                **{k: _frozen(doc[k]) for k in _OPTIONAL if k in doc},
                snapshot_uri=str(snapshot_uri).rstrip("/"),
                extra=_frozen({k: v for k, v in doc.items() if k not in known}))
        except KeyError as exc:
            raise ManifestError(f"{where}: no key {exc.args[0]!r}; re-ingest the source") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"{where}: malformed ({exc}); re-ingest the source") from None

    def __reduce__(self) -> tuple[Any, ...]:  # mapping proxies do not pickle; Ray and copy pickle
        return _manifest_from, (self.to_json(), self.snapshot_uri)

    def to_json(self) -> dict[str, Any]:
        """The document as stored (``snapshot_uri`` is not): the keys in the order ingest writes them."""
        out: dict[str, Any] = {
            "snapshot_id": self.snapshot_id, "schema_version": self.schema_version, "source": self.source,
            "layout": self.layout, "source_fingerprint": self.source_fingerprint,
            "class_names": list(self.class_names), "category_ids": list(self.category_ids),
            "splits": {name: s.to_json() for name, s in self.splits.items()},
            "quarantined": _thawed(self.quarantined), "counts": _thawed(self.counts),
            "settings": _thawed(self.settings), "created_at": self.created_at, "duration_s": self.duration_s,
            "cocoseg_version": self.cocoseg_version, "git_commit": self.git_commit}
        return {**out, **_thawed(self.extra)}


def _split(entry: Mapping[str, Any]) -> SplitEntry:
    shards = tuple(ShardEntry(path=str(s["path"]), rows=int(s["rows"]), bytes=int(s.get("bytes", 0)))
                   for s in entry.get("shards", ()))
    stats = entry.get("stats")
    return SplitEntry(source_split=str(entry.get("source_split", "")), images=int(entry.get("images", 0)),
                      annotations=int(entry.get("annotations", 0)), shards=shards,
                      stats=_frozen(stats) if stats is not None else None)


def _manifest_from(doc: Mapping[str, Any], snapshot_uri: str) -> Manifest:
    return Manifest.from_json(doc, snapshot_uri)


def dumps_manifest(manifest: Manifest) -> str:
    """Canonical JSON text of a manifest, as ``_manifest.json`` holds it."""
    return json.dumps(manifest.to_json(), indent=2) + "\n"
