"""Checkpoint commits: a copy stopped after any number of file writes (what a SIGKILL leaves) is
either refused by every reader or whole, on a local folder and on a real S3 server (moto).

The stop is injected at the storage layer: ``storage.write_bytes`` raises a BaseException after
``k`` writes, so nothing after it runs, exactly as if the process had died there. The code under
test (the commit order of ``publish`` / ``upload`` and the readers' checks) runs unchanged.
"""

from __future__ import annotations

import pytest
import torch

from cocoseg import storage
from cocoseg.engine import checkpoint as ckpt
from cocoseg.engine.ema import ModelEMA
from cocoseg.engine.optim import build_optimizer
from cocoseg.model import build_model
from cocoseg.model.weights import CheckpointError, ModelCard, load_checkpoint


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler on the way can swallow it."""


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def _checkpoint(folder, seed: int, epoch: int):
    torch.manual_seed(seed)
    net = build_model("n", num_classes=2)
    card = ModelCard(variant="n", num_classes=2, class_names=["a", "b"], imgsz=64)
    ema = ModelEMA(net)
    return ckpt.save_checkpoint(folder, model=net, ema=ema, optimizer=build_optimizer(net), scaler=None,
                                epoch=epoch, micro_step=epoch * 10, best_fitness=0.0, config={}, card=card), ema


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Checkpoints of epochs 1 and 2 (other weights), written once for the module."""
    base = tmp_path_factory.mktemp("ckpts")
    return _checkpoint(base / "one", seed=1, epoch=1), _checkpoint(base / "two", seed=2, epoch=2)


def _stops(root: str, n: int) -> list[int]:
    # every stop on a local folder; on S3 (seconds per 13 MB PUT to moto) the first and the last
    return list(range(n)) if not storage.is_s3(root) else [0, n - 1]


def _killed_after(monkeypatch, k: int, fn):
    real, calls = storage.write_bytes, []

    def write(uri, data):
        if len(calls) == k:
            raise _Killed(uri)
        calls.append(uri)
        real(uri, data)

    monkeypatch.setattr(storage, "write_bytes", write)
    try:
        fn()
    except _Killed:
        pass
    finally:
        monkeypatch.setattr(storage, "write_bytes", real)
    return len(calls)


def _same(model, ema) -> bool:
    ref = ema.module.state_dict()
    return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_publish_stopped_at_any_write_is_refused_or_whole(two_checkpoints, root, monkeypatch):
    (old, old_ema), (new, new_ema) = two_checkpoints
    dest = storage.join(root, "weights", "last")
    outcomes = []
    for k in [*_stops(root, len(ckpt.PUBLISHED) + 1), len(ckpt.PUBLISHED) + 1]:
        ckpt.publish(old, dest)
        done = _killed_after(monkeypatch, k, lambda: ckpt.publish(new, dest))
        try:
            model, _ = load_checkpoint(dest)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
            outcomes.append((done, "refused"))
            continue
        assert _same(model, old_ema) or _same(model, new_ema), f"mixed weights after {done} writes"
        whole = _same(model, new_ema)
        if done == len(ckpt.PUBLISHED) + 1:  # the marker too: complete for the strict readers as well
            assert whole and ckpt.check_complete(dest, hashes=True)["epoch"] == 2
        elif done < len(ckpt.PUBLISHED) + 1:
            with pytest.raises(ckpt.CheckpointError):
                ckpt.check_complete(dest)
        outcomes.append((done, "new" if whole else "old"))
    print("\npublish stopped after n writes ->", outcomes)
    assert outcomes[-1][1] == "new" and any(o == "refused" for _, o in outcomes)


def test_upload_stopped_midway_is_skipped_swept_and_redone(two_checkpoints, root, monkeypatch):
    run_dir = storage.join(root, "runs", "r")
    (one, _), (two, _) = two_checkpoints
    ckpt.upload(one, storage.join(run_dir, "checkpoint_epoch-0001"))
    partial = storage.join(run_dir, "checkpoint_epoch-0002")
    for k in _stops(root, len(list(two.iterdir()))):  # stops before the marker's write
        done = _killed_after(monkeypatch, k, lambda: ckpt.upload(two, partial))
        assert done == k
        with pytest.raises(ckpt.CheckpointError, match="not a complete cocoseg checkpoint"):
            ckpt.check_complete(partial)
        assert ckpt.latest_complete(run_dir) == (storage.join(run_dir, "checkpoint_epoch-0001"), 1)
    if not storage.is_s3(run_dir):  # a reader of the local folder refuses it too
        with pytest.raises(ckpt.CheckpointError, match="not a complete"):
            ckpt.load_train_state(partial)
    assert ckpt.sweep_incomplete(run_dir) == [partial]
    assert [u.rsplit("/", 1)[-1] for u in ckpt.checkpoint_dirs(run_dir)] == ["checkpoint_epoch-0001"]
    ckpt.upload(two, partial)
    assert ckpt.latest_complete(run_dir) == (partial, 2)
    assert ckpt.sweep_incomplete(run_dir) == []


def test_a_truncated_file_under_a_marker_is_refused(tmp_path):
    folder, _ = _checkpoint(tmp_path / "c", seed=1, epoch=0)
    state = folder / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match=r"train_state.pt is truncated"):
        ckpt.load_train_state(folder)
    weights = folder / ckpt.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the hash tells
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match checkpoint.json"):
        load_checkpoint(str(folder))


def test_a_torn_ray_snapshot_is_dropped_and_a_whole_one_kept(tmp_path):
    from cocoseg.engine.trainer import _drop_torn_ray_snapshot

    snap = tmp_path / "checkpoint_manager_snapshot.json"
    snap.write_text('{"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_ep')  # cut mid-write
    _drop_torn_ray_snapshot(str(tmp_path))
    assert not snap.exists()
    snap.write_text('{"checkpoint_results": []}')
    _drop_torn_ray_snapshot(str(tmp_path))
    assert snap.exists()
