"""Champion/challenger aliases, the gate, manual promotion and rollback.

Serving follows ``models:/NAME@champion`` and never a version number. A new version gets the
alias ``challenger``. A version carrying its served artifact's per-image matches is decided by
the evidence rule (:mod:`.evidence`, docs/promotion.md: the served artifact against its eager
model, the per-class guard, the paired bootstrap interval). Otherwise (the point rule below)
it takes ``champion`` only if its gate metric (mask AP50-95 by default)
is *greater* than the champion's + ``margin`` (a tie is not a promotion) and both were measured
comparably: the evaluate job's provenance tags (``eval.snapshot_id``, ``eval.split``,
``eval.images``, ``eval.protocol_hash``) must be present on both versions and equal; any
difference (or a version without them beside one with them) is "not comparable" and never
promotes. Versions that both predate the evaluate job fall back to comparing ``val_snapshot``.
With no champion yet the candidate becomes champion directly. Every decision is written as ``gate.*`` version tags with the
numbers, and a version that takes ``champion`` records ``previous_champion`` so that
:func:`rollback` can point the alias back without any other state.

Alias moves are single API calls; the champion move is always the last write of a decision, so
a failure before it leaves the aliases as they were.
"""

from __future__ import annotations

import getpass
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cocoseg.utils import get_logger

from .client import RegistryError

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "GateDecision",
    "alias_version",
    "decide",
    "promote",
    "rollback",
    "run_gate",
]

log = get_logger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG = "metric.{}"  # version tag holding a metric value as text
SNAPSHOT_TAG = "val_snapshot"
# What the evaluate job records (pipelines/evaluate.py, export_metrics); equal on both sides or no promotion.
PROVENANCE_TAGS = ("eval.snapshot_id", "eval.split", "eval.images", "eval.protocol_hash")


@dataclass(frozen=True)
class GateDecision:
    """One gate outcome; ``decision`` is ``bootstrap``, ``promoted``, ``rejected`` or ``manual``."""

    decision: str
    reason: str
    metric: str
    challenger_value: float
    champion_version: str | None = None
    champion_value: float | None = None
    margin: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)  # the evidence gate's tags (interval, drops, ...)

    @property
    def promote(self) -> bool:
        return self.decision in ("bootstrap", "promoted", "manual")

    def tags(self) -> dict[str, str]:
        return {"gate.decision": self.decision, "gate.reason": self.reason, "gate.metric": self.metric,
                "gate.challenger_value": repr(self.challenger_value),
                "gate.champion_version": self.champion_version or "",
                "gate.champion_value": "" if self.champion_value is None else repr(self.champion_value),
                "gate.margin": repr(self.margin), "gate.time": _now(),
                "gate.by": _who(), **self.extra}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _provenance_mismatch(provenance: tuple[dict[str, str], dict[str, str]] | None,
                         champion_version: str | None) -> str:
    """Why the two measurements are not comparable ("" when they are, or when neither has provenance)."""
    if not provenance:
        return ""
    ours, theirs = provenance
    if not any(ours.values()) and not any(theirs.values()):
        return ""
    diffs = [f"{key.removeprefix('eval.')} {ours.get(key) or 'missing'!r} vs {theirs.get(key) or 'missing'!r}"
             for key in PROVENANCE_TAGS if not ours.get(key) or ours.get(key) != theirs.get(key)]
    if not diffs:
        return ""
    return (f"not comparable: challenger vs champion v{champion_version} differ in " + "; ".join(diffs)
            + "; evaluate both with `cocoseg evaluate` on one snapshot split under one protocol")


def decide(metric: str, challenger: float, champion: float | None, margin: float, *,
           champion_version: str | None = None, snapshots: tuple[str, str] | None = None,
           provenance: tuple[dict[str, str], dict[str, str]] | None = None) -> GateDecision:
    """The pure gate rule (no I/O). ``snapshots`` = (challenger's, champion's) val snapshot ids
    (the legacy check); ``provenance`` = their :data:`PROVENANCE_TAGS` values."""
    if champion is None:
        return GateDecision("bootstrap", f"no champion yet: {metric}={challenger:.6g} becomes champion",
                            metric, challenger, None, None, margin)
    mismatch = _provenance_mismatch(provenance, champion_version)
    if not mismatch and snapshots and all(snapshots) and snapshots[0] != snapshots[1]:
        mismatch = (f"not comparable: challenger measured on val snapshot {snapshots[0]!r}, champion "
                    f"v{champion_version} on {snapshots[1]!r}; re-evaluate both on one snapshot")
    if mismatch:
        return GateDecision("rejected", mismatch, metric, challenger, champion_version, champion, margin)
    needed = champion + margin
    if challenger > needed:
        return GateDecision("promoted", f"{metric} {challenger:.6g} > champion v{champion_version} "
                            f"{champion:.6g} + margin {margin:g}", metric, challenger, champion_version,
                            champion, margin)
    tie = " (a tie is not a promotion)" if challenger == needed else ""
    return GateDecision("rejected", f"{metric} {challenger:.6g} does not beat champion v{champion_version} "
                        f"{champion:.6g} + margin {margin:g} (short by {needed - challenger:.3g}){tie}", metric,
                        challenger, champion_version, champion, margin)


def alias_version(client: Any, name: str, alias: str):
    """The ModelVersion behind ``name@alias``, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # MLflow answers INVALID_PARAMETER_VALUE "Registered model alias X not found" (not 404).
        if "not found" in str(exc).lower() or exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def metric_value(version: Any, metric: str) -> float:
    raw = version.tags.get(METRIC_TAG.format(metric))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise RegistryError(f"model version {version.name} v{version.version} has no numeric tag "
                            f"{METRIC_TAG.format(metric)!r} (got {raw!r}); it cannot take part in the gate") from None
    if not math.isfinite(value):
        raise RegistryError(f"model version {version.name} v{version.version}: {metric} is {value}")
    return value


def _move_champion(client: Any, name: str, version: str, previous: str | None) -> None:
    """Point ``champion`` at ``version`` (the last essential write), then tidy up best-effort."""
    if previous and previous != version:
        client.set_model_version_tag(name, version, "previous_champion", previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    try:
        client.set_model_version_tag(name, version, "champion_since", _now())
        challenger = alias_version(client, name, CHALLENGER)
        if challenger is not None and challenger.version == version:
            client.delete_registered_model_alias(name, CHALLENGER)
        if previous and previous != version:
            client.set_model_version_tag(name, previous, "superseded_by", version)
    except Exception as exc:  # the alias already moved; bookkeeping must not undo a promotion
        log.warning("%s v%s is champion, but updating its bookkeeping tags failed: %s", name, version, exc)


# (champion ModelVersion) -> ({iou type: Matches} on the challenger's images or None, tags saying how)
ChampionEvidence = Callable[[Any], tuple[dict[str, Any] | None, dict[str, str]]]


def _tag_metrics(version: Any) -> dict[str, float]:
    out = {}
    for key, raw in version.tags.items():
        if key.startswith("metric."):
            try:
                out[key.removeprefix("metric.")] = float(raw)
            except ValueError:
                continue
    return out


def _evidence_gate(candidate: Any, champion: Any, metric: str, policy: Any, matches: dict[str, Any],
                   champion_evidence: ChampionEvidence | None) -> GateDecision:
    """The evidence rule (:mod:`.evidence`) with the champion's matches fetched or re-measured."""
    from .evidence import decide_on_evidence, iou_type_of

    kind = iou_type_of(metric)
    theirs, how = None, {}
    if champion is not None:
        theirs, how = champion_evidence(champion) if champion_evidence else (None, {})
        if theirs is None:
            value = float(matches[kind].ap()[0])
            reason = (f"not comparable: champion v{champion.version} has no per-image matches on the challenger's "
                      f"snapshot/split and could not be evaluated there ({how.get('gate.champion_evidence', 'no snapshot')})")
            return GateDecision("rejected", reason, metric, value, champion.version, None, policy.margin,
                                {**how, "gate.refused_by": "not_comparable", "gate.evidence": "paired-bootstrap"})
    v = decide_on_evidence(policy, metric, _tag_metrics(candidate), matches[kind],
                           theirs[kind] if theirs else None, f"v{champion.version}" if champion is not None else "")
    extra = {**how, **v.tags, "gate.evidence": "paired-bootstrap", "gate.refused_by": v.refused_by,
             "gate.iou_type": kind}
    return GateDecision(v.decision, v.reason, metric, v.challenger_value,
                        champion.version if champion is not None else None, v.champion_value, policy.margin, extra)


def run_gate(client: Any, name: str, version: str, *, metric: str, margin: float,
             same_snapshot: bool = True, policy: Any = None, matches: dict[str, Any] | None = None,
             champion_evidence: ChampionEvidence | None = None) -> GateDecision:
    """Give ``version`` the challenger alias, decide, tag the decision, promote when it wins.

    With ``policy`` (:class:`.evidence.GatePolicy`) and the challenger's served ``matches``, the
    evidence rule decides (``champion_evidence`` supplies the champion's matches on the same
    images); otherwise the point rule of :func:`decide` (a version registered without evaluation).
    """
    candidate = client.get_model_version(name, version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    champion = alias_version(client, name, CHAMPION)
    if policy is not None and matches is not None:
        result = _evidence_gate(candidate, champion, metric, policy, matches, champion_evidence)
    else:
        value = metric_value(candidate, metric)
        champ_value = metric_value(champion, metric) if champion is not None else None
        snapshots = provenance = None
        if same_snapshot and champion is not None:
            snapshots = (candidate.tags.get(SNAPSHOT_TAG, ""), champion.tags.get(SNAPSHOT_TAG, ""))
            provenance = tuple({k: v.tags.get(k, "") for k in PROVENANCE_TAGS} for v in (candidate, champion))
        result = decide(metric, value, champ_value, margin, champion_version=champion.version if champion is not None
                        else None, snapshots=snapshots, provenance=provenance)
    for key, text in result.tags().items():
        client.set_model_version_tag(name, version, key, text)
    if result.promote:
        _move_champion(client, name, version, champion.version if champion is not None else None)
    log.info("gate %s v%s: %s (%s)", name, version, result.decision, result.reason)
    return result


def _require_version(client: Any, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"registered model {name!r} has no version {version}: {exc.message}") from None


def promote(client: Any, name: str, version: str, *, reason: str = "") -> str | None:
    """Make ``version`` champion by hand (no gate); returns the previous champion's version.

    A version the per-class guard refused is promoted only with a ``reason``; the refusal it
    overrides and the reason are recorded (``gate.override``, ``gate.override_reason``)."""
    mv = _require_version(client, name, version)
    champion = alias_version(client, name, CHAMPION)
    previous = champion.version if champion is not None else None
    if previous == str(version):
        raise RegistryError(f"{name} v{version} already is the champion")
    refused = (mv.tags or {}).get("gate.refused_by", "")
    if refused == "class_guard":
        if not reason.strip():
            raise RegistryError(f"{name} v{version} was refused by the per-class guard "
                                f"({(mv.tags or {}).get('gate.class_drops', '')}); promote it only with --reason \"why\"")
        client.set_model_version_tag(name, str(version), "gate.override", refused)
        client.set_model_version_tag(name, str(version), "gate.override_reason", reason)
    client.set_model_version_tag(name, str(version), "gate.decision", "manual")
    client.set_model_version_tag(name, str(version), "gate.reason", reason.strip() or "manual promotion")
    client.set_model_version_tag(name, str(version), "gate.by", _who())
    client.set_model_version_tag(name, str(version), "gate.time", _now())
    _move_champion(client, name, str(version), previous)
    return previous


def rollback(client: Any, name: str) -> tuple[str, str]:
    """Point ``champion`` back at the version it replaced; returns (from, to)."""
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        raise RegistryError(f"registered model {name!r} has no champion to roll back")
    target = champion.tags.get("previous_champion")
    if not target:
        raise RegistryError(f"{name} v{champion.version} is champion but records no previous champion; "
                            "nothing to roll back to (use `cocoseg promote` to pick a version)")
    _require_version(client, name, target)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, champion.version, "rolled_back", f"{_now()} -> v{target} by {_who()}")
    log.info("rolled back %s@champion: v%s -> v%s", name, champion.version, target)
    return champion.version, target
