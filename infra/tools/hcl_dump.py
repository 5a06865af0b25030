"""Parse every Terraform file under a folder with python-hcl2 and print one JSON object.

Run with the interpreter of the python-hcl2 venv (.venv-hcl, infra/requirements-hcl.txt):
checkov vendors a fork of the same ``hcl2`` package, so the two cannot share an environment.

    .venv-hcl/bin/python infra/tools/hcl_dump.py infra/terraform > parsed.json

Output: ``{"<path relative to the folder>": <parsed document> | {"__error__": "<message>"}}`` for
every ``*.tf`` and ``*.tfvars`` file. Exit status 1 if any file failed to parse.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hcl2
from hcl2.utils import SerializationOptions


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    options = SerializationOptions(strip_string_quotes=True)
    out: dict[str, object] = {}
    failed = False
    files = sorted(p for pattern in ("*.tf", "*.tfvars") for p in root.rglob(pattern) if ".terraform" not in p.parts)
    for path in files:
        try:
            with path.open() as handle:
                out[path.relative_to(root).as_posix()] = hcl2.load(handle, serialization_options=options)
        except Exception as exc:  # report every broken file, not just the first
            failed = True
            out[path.relative_to(root).as_posix()] = {"__error__": f"{type(exc).__name__}: {exc}"}
    json.dump(out, sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
