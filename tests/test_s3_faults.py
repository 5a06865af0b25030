"""S3 faults through a fault-injecting proxy in front of a real moto server: transient HTTP 500 /
503 SlowDown / connection resets are retried with backoff and the commit completes; a fault that
does not pass is one line naming the object, and the half-written output is never taken as
committed (its marker is missing, so readers and resumes skip it).

What goes through these code paths: checkpoint uploads and ``weights/{last,best}``
(``engine.checkpoint``), export bundles (``pipelines.export`` writes via ``storage.write_bytes``,
manifest last), the register job's read of an export (``storage.local_copy``), the snapshot
manifest of ingest, and boto3 calls (``storage.s3_client``).
"""

from __future__ import annotations

import uuid

import pytest
from s3_fault_proxy import FaultProxy, Rule

from cocoseg import storage
from cocoseg.engine import checkpoint as ckpt


@pytest.fixture
def faulty(moto_server, monkeypatch, tmp_path):
    """(proxy, bucket URI): the bucket is made on moto directly; then every S3 call of the test
    goes through the proxy (its endpoint in AWS_ENDPOINT_URL), retried quickly."""
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    with FaultProxy(moto_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("COCOSEG_S3_BACKOFF_S", "0.02")
        monkeypatch.setenv("COCOSEG_S3_ATTEMPTS", "4")
        yield proxy, f"s3://{bucket}"


def _folder(tmp_path, epoch: int):
    """A small committed local folder (marker with the files' sizes and hashes)."""
    folder = tmp_path / f"local-{epoch}"
    files = {"config.json": b"{}\n", "model.safetensors": bytes(range(256)) * 400, "state.bin": b"s" * 70_000}
    storage.write_manifest(str(folder), ckpt.MARKER_FILE, files, extra={"epoch": epoch})
    return folder


def test_transient_faults_are_retried_and_the_checkpoint_commits(faulty, tmp_path):
    proxy, bucket = faulty
    run_dir = f"{bucket}/runs/r"
    dest = f"{run_dir}/checkpoint_epoch-0003"
    proxy.add(Rule("PUT", "model.safetensors", "503", times=2), Rule("PUT", "checkpoint.json", "reset", times=1),
              Rule("PUT", "state.bin", "500", times=1), Rule("GET", "checkpoint.json", "500", times=1),
              Rule("GET", "list-type", "503", times=1))
    ckpt.upload(_folder(tmp_path, 3), dest)
    assert ckpt.check_complete(dest, hashes=True)["epoch"] == 3
    assert ckpt.latest_complete(run_dir) == (dest, 3)
    assert all(rule.times == 0 for rule in proxy.rules), proxy.rules  # every fault was served
    print(f"\nfaults served and retried: {proxy.hits}")

    # the register job's read of a folder (list + gets) and a boto3 call, through more faults
    proxy.add(Rule("GET", "model.safetensors", "reset", times=1), Rule("PUT", "boto.txt", "503", times=2))
    with storage.local_copy(dest) as local:
        assert (local / "model.safetensors").read_bytes() == bytes(range(256)) * 400
    storage.s3_client().put_object(Bucket=bucket[5:], Key="boto.txt", Body=b"x")
    assert storage.read_bytes(f"{bucket}/boto.txt") == b"x"
    assert all(rule.times == 0 for rule in proxy.rules)


def test_a_lasting_fault_is_one_line_naming_the_object_and_nothing_is_committed(faulty, tmp_path):
    proxy, bucket = faulty
    run_dir = f"{bucket}/runs/r"
    ckpt.upload(_folder(tmp_path, 1), f"{run_dir}/checkpoint_epoch-0001")
    dest = f"{run_dir}/checkpoint_epoch-0002"
    proxy.add(Rule("PUT", "checkpoint_epoch-0002/state.bin", "503", times=-1))
    with pytest.raises(storage.StorageError) as err:
        ckpt.upload(_folder(tmp_path, 2), dest)
    message = str(err.value)
    print(f"\n{message}")
    assert "\n" not in message
    assert f"{dest}/state.bin" in message and "after 4 attempts" in message and "slow" in message.lower()
    proxy.clear()
    with pytest.raises(ckpt.CheckpointError, match="commit marker checkpoint.json is missing"):
        ckpt.check_complete(dest)
    assert ckpt.latest_complete(run_dir) == (f"{run_dir}/checkpoint_epoch-0001", 1)
    assert ckpt.sweep_incomplete(run_dir) == [dest]


def test_a_fault_that_is_not_transient_fails_at_once(faulty):
    _, bucket = faulty
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes(f"{bucket}/nothing/here.json")
    with pytest.raises(storage.StorageError, match="nosuchbucket|NoSuchBucket|bucket") as err:
        storage.write_bytes("s3://no-such-bucket-cocoseg/x.json", b"{}")
    assert "attempts" not in str(err.value)  # not retried
