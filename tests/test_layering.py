"""The import-layering contract of style.md holds (import-linter, configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _contract_layers() -> list[set[str]]:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in config["contracts"] if c["type"] == "layers")
    return [{name.strip().removeprefix("cocoseg.") for name in layer.split("|")} for layer in layers]


def test_the_package_docstring_and_architecture_doc_list_the_contracts_layers():
    import re

    import cocoseg

    in_docstring = [set(re.findall(r"``(\w+)``", line)) for line in cocoseg.__doc__.splitlines()
                    if line.startswith("- ``")]
    doc = (REPO / "docs" / "architecture.md").read_text()
    in_doc = [{name.strip().removeprefix("cocoseg/") for name in m.group(1).split("|")}
              for m in re.finditer(r"^\s*\d+\s+(cocoseg/[\w/ |]+?)\s*(?:\.\.|$)", doc, re.MULTILINE)]
    assert in_docstring == _contract_layers(), "cocoseg/__init__.py's layer list differs from pyproject.toml's"
    assert in_doc == _contract_layers(), "docs/architecture.md's layer table differs from pyproject.toml's"
