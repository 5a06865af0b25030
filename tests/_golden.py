"""Golden numbers with an accept switch: ``UPDATE_GOLDEN=1 pytest ...`` rewrites the JSON files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).parent / "golden"


def check_golden(name: str, actual: dict[str, Any], rel: float = 1e-4, abs_: float = 1e-6) -> None:
    """Compare ``actual`` (JSON-able: numbers, lists, dicts) with ``golden/<name>.json``.

    On a mismatch the message prints the new values, so a deliberate change is reviewed and then
    accepted with ``UPDATE_GOLDEN=1``.
    """
    path = GOLDEN_DIR / f"{name}.json"
    actual = json.loads(json.dumps(actual))
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        if not path.exists() and os.environ.get("UPDATE_GOLDEN") != "1":
            raise AssertionError(f"golden file {path} is missing; run with UPDATE_GOLDEN=1 to create it:\n"
                                 f"{json.dumps(actual, indent=1)[:4000]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
        return
    expected = json.loads(path.read_text())
    problems = list(_diff(expected, actual, name, rel, abs_))
    if problems:
        raise AssertionError(f"{len(problems)} value(s) differ from {path} (UPDATE_GOLDEN=1 accepts the new ones):\n"
                             + "\n".join(problems[:20]) + f"\nnew values:\n{json.dumps(actual, indent=1)[:4000]}")


def _diff(expected: Any, actual: Any, where: str, rel: float, abs_: float):
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            yield f"{where}: keys {sorted(expected)} != {sorted(actual)}"
            return
        for k in expected:
            yield from _diff(expected[k], actual[k], f"{where}.{k}", rel, abs_)
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            yield f"{where}: length {len(expected)} != {len(actual)}"
            return
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            yield from _diff(e, a, f"{where}[{i}]", rel, abs_)
    elif isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if not math.isclose(expected, actual, rel_tol=rel, abs_tol=abs_):
            yield f"{where}: expected {expected}, got {actual}"
    elif expected != actual:
        yield f"{where}: expected {expected!r}, got {actual!r}"
