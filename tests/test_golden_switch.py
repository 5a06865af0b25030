"""The golden mechanism itself can fail: a changed value or a missing file is an error that
prints the new values, and ``UPDATE_GOLDEN=1`` accepts them."""

from __future__ import annotations

import json

import _golden
import pytest


def test_golden_fails_on_a_change_and_the_switch_accepts_it(tmp_path, monkeypatch):
    monkeypatch.setattr(_golden, "GOLDEN_DIR", tmp_path)
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    with pytest.raises(AssertionError, match="missing; run with UPDATE_GOLDEN=1"):
        _golden.check_golden("g", {"loss": 1.0, "terms": [0.5, 0.25]})
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    _golden.check_golden("g", {"loss": 1.0, "terms": [0.5, 0.25]})
    monkeypatch.delenv("UPDATE_GOLDEN")
    _golden.check_golden("g", {"loss": 1.0 + 1e-7, "terms": [0.5, 0.25]})  # within tolerance
    with pytest.raises(AssertionError, match=r"(?s)UPDATE_GOLDEN=1 accepts.*g\.terms\[1\]: expected 0\.25, got 0\.3"):
        _golden.check_golden("g", {"loss": 1.0, "terms": [0.5, 0.3]})
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    _golden.check_golden("g", {"loss": 1.0, "terms": [0.5, 0.3]})
    assert json.loads((tmp_path / "g.json").read_text())["terms"] == [0.5, 0.3]
