"""The README stays a few screens long and current: every config section, every part of the
library and every docs/ file is named in it (issue 26: it had drifted to 7 of 13 sections)."""

from __future__ import annotations

import dataclasses
import re

from conftest import REPO

from cocoseg.config import JobConfig

README = (REPO / "README.md").read_text()


def test_the_readme_fits_on_a_few_screens():
    assert len(README.splitlines()) <= 300


def test_every_config_section_has_a_row():
    rows = set(re.findall(r"^\| `(\w+)` \|", README, re.MULTILINE))
    missing = {f.name for f in dataclasses.fields(JobConfig)} - rows
    assert not missing, f"README's config table lacks {sorted(missing)}"


def test_every_part_of_the_library_and_every_doc_is_named():
    parts = {p.name + "/" if p.is_dir() else p.name for p in (REPO / "cocoseg").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))}
    missing = sorted(p for p in parts if f"`{p}`" not in README)
    assert not missing, f"README's code table lacks {missing}"
    docs = sorted(p.name for p in (REPO / "docs").glob("*.md") if f"(docs/{p.name})" not in README)
    assert not docs, f"README does not point to {docs}"
