"""The test data kept in ``tests/fixtures`` is intact: every folder's ``SHA256SUMS`` lists each of
its files (``README.md`` and the sums file aside) with the right hash, and coco8-seg is the
8-image sample the tests expect."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import FIXTURES

UNLISTED = {"README.md", "SHA256SUMS"}
SUM_FILES = sorted(FIXTURES.rglob("SHA256SUMS"))


def test_every_fixture_folder_has_sums():
    folders = {p.parent.relative_to(FIXTURES).as_posix() for p in SUM_FILES}
    assert folders == {"coco8-seg", "schemas", "reference"}, folders
    covered = [f for f in FIXTURES.rglob("*") if f.is_file() and f.name not in UNLISTED]
    assert all(any(s.parent in f.parents for s in SUM_FILES) for f in covered)


@pytest.mark.parametrize("sums", SUM_FILES, ids=lambda p: p.parent.name)
def test_sha256sums_match(sums: Path):
    root = sums.parent
    listed = {}
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    present = {f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file() and f.name not in UNLISTED}
    assert present == set(listed), f"{root}: unlisted {sorted(present - set(listed))}, " \
                                   f"missing {sorted(set(listed) - present)}"
    wrong = [name for name, digest in listed.items()
             if hashlib.sha256((root / name).read_bytes()).hexdigest() != digest]
    assert not wrong, f"{root}: files differ from SHA256SUMS: {wrong}"


def test_coco8_seg_is_the_eight_image_sample(coco8_seg: Path):
    assert coco8_seg == FIXTURES / "coco8-seg"
    for split in ("train", "val"):
        images = sorted(p.stem for p in (coco8_seg / "images" / split).glob("*.jpg"))
        labels = sorted(p.stem for p in (coco8_seg / "labels" / split).glob("*.txt"))
        assert len(images) == 4 and images == labels
    assert (coco8_seg / "LICENSE").is_file() and (coco8_seg / "README.md").is_file()  # attribution kept
