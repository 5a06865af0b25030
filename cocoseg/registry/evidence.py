"""The gate's evidence: the served artifact against its eager model, the per-class guard and the
paired per-image bootstrap against the champion (docs/promotion.md).

:func:`decide_on_evidence` is the pure rule, in this order:

1. **export check**: every evaluated served artifact (``served/<format>/{mask,box}_ap50_95``)
   may trail the eager model's AP50-95 by at most ``max_export_drop``, or the version is refused
   (even as the first champion): what is served must be what was measured;
2. no champion: the candidate becomes champion (``bootstrap``);
3. **per-class guard**: no class with objects in the split may lose more than
   ``max_class_drop`` AP50-95 against the champion (``refused_by=class_guard``; only
   ``cocoseg promote --reason`` overrides it);
4. **paired bootstrap**: promoted only when the lower bound of the AP difference's interval is
   above ``margin``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cocoseg.metrics.bootstrap import BootstrapResult, Matches, paired_bootstrap

__all__ = ["SERVED_PREFIX", "GatePolicy", "class_drops", "decide_on_evidence", "export_drops", "iou_type_of"]

SERVED_PREFIX = "served/"  # metrics.json keys of the served artifacts: served/<format>/<kind>_ap50_95


@dataclass(frozen=True)
class GatePolicy:
    """The evidence gate's settings (``registry.*``)."""

    margin: float = 0.0
    max_export_drop: float = 0.005
    max_class_drop: float = 0.05
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    @classmethod
    def from_config(cls, r: Any) -> GatePolicy:
        return cls(r.promotion_margin, r.max_export_drop, r.max_class_drop, r.bootstrap_resamples, r.bootstrap_seed,
                   r.bootstrap_confidence)


@dataclass(frozen=True)
class Verdict:
    decision: str  # bootstrap | promoted | rejected
    reason: str
    challenger_value: float
    champion_value: float | None = None
    refused_by: str = ""  # export_drop | class_guard | interval | not_comparable
    tags: dict[str, str] = field(default_factory=dict)


def iou_type_of(metric: str) -> str:
    """``segm`` for a mask metric (the default ``val/mask_ap50_95``), else ``bbox``."""
    return "segm" if "mask" in metric else "bbox"


def export_drops(metrics: dict[str, float], max_drop: float) -> list[str]:
    """One line per served artifact and kind whose AP50-95 trails the eager ``val/<kind>_ap50_95`` by more
    than ``max_drop``; ``metrics`` holds both (flat metrics.json names, or version tags' values)."""
    lines = []
    for key, value in sorted(metrics.items()):
        if not key.startswith(SERVED_PREFIX) or not key.endswith("_ap50_95") or "/delta_" in key:
            continue
        fmt, stat = key[len(SERVED_PREFIX):].split("/", 1)
        eager = metrics.get(f"val/{stat}")
        if eager is not None and eager - value > max_drop:
            kind = stat.split("_")[0]
            lines.append(f"served artifact {fmt}: {kind} AP50-95 {value:.4f} vs eager {eager:.4f} "
                         f"(drop {eager - value:.4f} > registry.max_export_drop {max_drop:g})")
    return lines


def class_drops(challenger: Matches, champion: Matches, max_drop: float) -> list[tuple[str, float, float]]:
    """(class, champion AP, challenger AP) for every class with objects that lost more than ``max_drop``."""
    ours, theirs = challenger.per_class(), champion.per_class()
    return [(name, theirs[name], ours.get(name, 0.0)) for name in sorted(theirs)
            if theirs[name] - ours.get(name, 0.0) > max_drop]


def _interval_reason(b: BootstrapResult, margin: float, champion: str) -> tuple[bool, str]:
    pct = f"{b.confidence * 100:g} %"
    head = (f"AP50-95 {b.challenger_ap:.4f} vs champion {champion} {b.champion_ap:.4f}: difference "
            f"{b.difference:+.4f}, {pct} paired-bootstrap interval [{b.low:+.4f}, {b.high:+.4f}] "
            f"({b.resamples} resamples of {b.images} images, seed {b.seed})")
    if b.low > margin:
        return True, f"{head}: lower bound above margin {margin:g}"
    spans = " (the interval spans 0)" if b.low <= 0 <= b.high else ""
    return False, f"{head}: lower bound not above margin {margin:g}{spans}"


def decide_on_evidence(policy: GatePolicy, metric: str, challenger_metrics: dict[str, float],
                       challenger: Matches, champion: Matches | None, champion_label: str = "") -> Verdict:
    """The evidence rule (module docstring); ``challenger`` / ``champion``: the served artifacts'
    matches of the gate metric's IoU type on the same images."""
    value = float(challenger.ap()[0])
    drops = export_drops(challenger_metrics, policy.max_export_drop)
    if drops:
        return Verdict("rejected", "; ".join(drops), value, refused_by="export_drop")
    if champion is None:
        return Verdict("bootstrap", f"no champion yet: served {metric} {value:.6g} becomes champion", value)
    champ_value = float(champion.ap()[0])
    lost = class_drops(challenger, champion, policy.max_class_drop)
    if lost:
        named = ", ".join(f"{n!r} {a:.3f} -> {b:.3f} ({b - a:+.3f})" for n, a, b in lost)
        return Verdict("rejected", f"per-class guard: {len(lost)} class(es) lose more than registry.max_class_drop "
                       f"{policy.max_class_drop:g} AP50-95 against champion {champion_label}: {named}", value,
                       champ_value, "class_guard", {"gate.class_drops": named[:5000]})
    b = paired_bootstrap(challenger, champion, resamples=policy.resamples, seed=policy.seed,
                         confidence=policy.confidence)
    ok, reason = _interval_reason(b, policy.margin, champion_label)
    return Verdict("promoted" if ok else "rejected", reason, value, champ_value, "" if ok else "interval", b.tags())
