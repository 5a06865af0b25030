"""Storage: one code path for local folders and a real S3 protocol server (moto)."""

from __future__ import annotations

import pytest

from cocoseg import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_write_read_list_delete(root):
    a, b = storage.join(root, "x", "a.json"), storage.join(root, "x", "y", "b.bin")
    assert not storage.exists(a)
    storage.write_json(a, {"k": 1})
    storage.write_bytes(b, b"\x00\x01")
    assert storage.read_json(a) == {"k": 1}
    assert storage.read_bytes(b) == b"\x00\x01"
    entries = storage.list_files(storage.join(root, "x"))
    assert [e.uri for e in entries] == sorted([a, b])
    assert [e.size for e in storage.list_files(root, suffix=".bin")] == [2]
    storage.delete(storage.join(root, "x"), recursive=True)
    assert storage.list_files(root) == []


def test_missing_file_is_a_clear_error(root):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        storage.read_bytes(storage.join(root, "nope.json"))


def test_malformed_json_names_the_uri(root):
    uri = storage.join(root, "bad.json")
    storage.write_text(uri, "{not json")
    with pytest.raises(ValueError, match=r"bad.json: malformed JSON at line 1"):
        storage.read_json(uri)


def test_local_write_is_atomic_no_temp_left(tmp_path):
    uri = str(tmp_path / "f.txt")
    storage.write_text(uri, "one")
    storage.write_text(uri, "two")
    assert storage.read_text(uri) == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_upload_download_round_trip(tmp_path, s3_bucket):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "w.bin").write_bytes(b"abc")
    (src / "top.txt").write_text("t")
    storage.upload_dir(src, s3_bucket + "/up")
    out = storage.download_dir(s3_bucket + "/up", tmp_path / "dst")
    assert (out / "d" / "w.bin").read_bytes() == b"abc" and (out / "top.txt").read_text() == "t"
    with storage.local_copy(s3_bucket + "/up/top.txt") as p:
        assert p.read_text() == "t"
