"""The evidence gate against a real ``mlflow server``: exports carrying the served ONNX's per-image
COCOeval matches (detections of chosen quality on a small ground truth, scored by pycocotools),
registered one after another under one name. No part of the gate is replaced."""

from __future__ import annotations

import uuid

import pytest
from _gate_support import detections, evidence_export, ground_truth

from cocoseg.registry import CHAMPION, RegistryError, alias_version, connect, promote, register_export
from cocoseg.registry.evidence import GatePolicy


@pytest.fixture(scope="module")
def gt():
    return ground_truth(images=40, seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One TinySeg export; every version below is a copy carrying other evidence."""
    from export_helpers import make_export

    return make_export(tmp_path_factory.mktemp("gate") / "base", metric=0.0)


def test_gate_promotes_only_on_evidence(mlflow_server, gt, base, tmp_path):
    client = connect(mlflow_server)
    name = f"gate-{uuid.uuid4().hex[:8]}"
    policy = GatePolicy(margin=0.0, resamples=300, seed=3)
    poor = detections(gt, jitter=0.25, seed=1, miss=0.3)

    def register(label, results, **kw):
        export = evidence_export(tmp_path / label, gt, results, base=base, **kw)
        return register_export(export, name=name, tracking_uri=mlflow_server, policy=policy,
                               champion_evidence=lambda champion: (_stored(client, name, champion), {}))

    first = register("champion", poor)
    assert first.decision.decision == "bootstrap"

    same = register("identical", poor)  # the same detections: a difference of exactly 0
    tags = client.get_model_version(name, same.version).tags
    assert same.decision.decision == "rejected" and "spans 0" in same.decision.reason
    assert float(tags["gate.ci_low"]) == float(tags["gate.ci_high"]) == 0.0
    assert tags["gate.resamples"] == "300" and tags["gate.seed"] == "3" and tags["gate.refused_by"] == "interval"

    collapsed = register("collapsed", detections(gt, jitter=0.03, seed=2, drop_class="square"))
    reason = collapsed.decision.reason
    assert collapsed.decision.decision == "rejected" and "per-class guard" in reason and "'square'" in reason
    assert "'circle'" not in reason and collapsed.decision.challenger_value > first.decision.challenger_value

    broken = register("broken", detections(gt, jitter=0.03, seed=3), eager_gap=0.02)
    assert broken.decision.decision == "rejected" and "served artifact onnx: mask AP50-95" in broken.decision.reason
    assert "registry.max_export_drop 0.005" in broken.decision.reason

    better = register("better", detections(gt, jitter=0.03, seed=4))
    tags = client.get_model_version(name, better.version).tags
    assert better.decision.decision == "promoted", better.decision.reason
    assert 0 < float(tags["gate.ci_low"]) <= float(tags["gate.difference"]) <= float(tags["gate.ci_high"])
    assert alias_version(client, name, CHAMPION).version == better.version

    # the per-class refusal is overridden only by an explicit promotion with a reason, recorded
    with pytest.raises(RegistryError, match="per-class guard.*--reason"):
        promote(client, name, collapsed.version)
    promote(client, name, collapsed.version, reason="square is retired from the product")
    tags = client.get_model_version(name, collapsed.version).tags
    assert tags["gate.override"] == "class_guard" and tags["gate.override_reason"].startswith("square is retired")
    assert alias_version(client, name, CHAMPION).version == collapsed.version


def _stored(client, name, champion):
    """The champion's matches as the register job fetches them: the version's own artifact."""
    import tempfile

    from cocoseg.metrics.bootstrap import load_matches
    from cocoseg.registry import download

    with tempfile.TemporaryDirectory() as tmp:
        return load_matches(download(client.tracking_uri, f"models:/{name}/{champion.version}/artifacts/matches.npz",
                                     tmp))
