"""Repeat-factor sampling (data.repeat_factor_threshold): the LVIS formula, stochastic rounding in the
epoch plan, disjoint equal parts per rank, and the factors read from a real snapshot."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from cocoseg.config import load_config
from cocoseg.data.repeat_factor import class_repeat_factors, expected_rows, image_repeat_factors, with_repeats
from cocoseg.data.stage import epoch_chunks


def _skewed(n: int = 1000, rare_every: int = 50) -> tuple[list[list[np.ndarray]], list[int]]:
    """Two shards of a set where class 0 is in every image and class 1 in one image of ``rare_every``."""
    classes = [np.asarray([0, 1] if i % rare_every == 7 else [0, 0], np.int64) for i in range(n)]
    rare = [i for i in range(n) if i % rare_every == 7]
    return [classes[: n // 2], classes[n // 2:]], rare


def test_class_and_image_factors_follow_the_lvis_formula() -> None:
    f = class_repeat_factors([1000, 20, 0, 400], 1000, threshold=0.1)
    assert f[0] == 1.0 and f[3] == 1.0  # f_c >= t: never below 1
    assert f[1] == pytest.approx(math.sqrt(0.1 / 0.02)) and f[2] == 1.0  # an absent class raises nothing
    r = image_repeat_factors([np.asarray([0, 3]), np.asarray([0, 1, 1]), np.zeros(0, np.int64)], f)
    assert r.tolist() == pytest.approx([1.0, math.sqrt(5.0), 1.0])
    assert class_repeat_factors([5, 1], 10, threshold=0.0).tolist() == [1.0, 1.0]  # off


def test_rare_share_rises_as_the_formula_says_and_ranks_stay_disjoint() -> None:
    shards, rare = _skewed()
    per_class = class_repeat_factors([1000, len(rare)], 1000, threshold=0.1)
    factors = [image_repeat_factors(s, per_class) for s in shards]
    r = math.sqrt(0.1 / (len(rare) / 1000))
    rare_set = {(i // 500, i % 500) for i in rare}
    shares, epochs, world = [], 60, 2
    for epoch in range(epochs):
        seen: Counter = Counter()
        parts = [epoch_chunks([500, 500], seed=3, epoch=epoch, rank=k, world=world, chunk_rows=16, repeats=factors)
                 for k in range(world)]
        sizes = [sum(b - a for c in p for _, a, b in c) for p in parts]
        assert sizes[0] == sizes[1]  # equal parts: DDP steps stay in lockstep
        for part in parts:
            for chunk in part:
                for shard, a, b in chunk:
                    seen.update((shard, k) for k in range(a, b))
        total = sum(seen.values())
        assert total >= 1000
        # every image at least once (but for the < world rows an equal split drops), rare ones floor/ceil(r) times
        assert sum(1 for s in range(2) for k in range(500) if seen[(s, k)] == 0) < world
        assert all(seen[key] in (math.floor(r), math.ceil(r)) or seen[key] == math.floor(r) - 1 for key in rare_set)
        shares.append(sum(seen[key] for key in rare_set) / total)
    expected = len(rare) * r / (1000 - len(rare) + len(rare) * r)  # 2 % of images -> ~4.4 % of samples
    assert np.mean(shares) == pytest.approx(expected, rel=0.05)
    assert expected > 2 * len(rare) / 1000
    plain = epoch_chunks([500, 500], seed=3, epoch=0, rank=0, world=1, chunk_rows=16)
    rare_plain = sum(1 for c in plain for s, a, b in c for k in range(a, b) if (s, k) in rare_set)
    assert rare_plain / 1000 == pytest.approx(len(rare) / 1000)
    assert expected_rows(factors) == pytest.approx(1000 - len(rare) + len(rare) * r)


def test_plan_is_seeded_and_factors_of_one_change_nothing() -> None:
    shards, _ = _skewed()
    factors = [image_repeat_factors(s, class_repeat_factors([1000, 20], 1000, 0.1)) for s in shards]
    kw = dict(seed=1, rank=1, world=2, chunk_rows=16)
    assert epoch_chunks([500, 500], epoch=4, repeats=factors, **kw) == epoch_chunks([500, 500], epoch=4, repeats=factors, **kw)
    assert epoch_chunks([500, 500], epoch=4, repeats=factors, **kw) != epoch_chunks([500, 500], epoch=5, repeats=factors, **kw)
    ones = [np.ones(500, np.float32), np.ones(500, np.float32)]
    assert epoch_chunks([500, 500], epoch=4, repeats=ones, **kw) == epoch_chunks([500, 500], epoch=4, **kw)
    # only the rows a plan holds are repeated (data.max_train_images)
    runs = with_repeats([(0, 0, 10)], [np.full(500, 3.0, np.float32)], seed=0, epoch=0)
    assert sum(b - a for _, a, b in runs) == 30 and all(b <= 10 for _, _, b in runs)


def test_factors_come_from_a_real_snapshot(tiny_snapshot) -> None:
    from cocoseg.data.class_stats import read_image_classes, split_stats
    from cocoseg.data.schema import list_shards, read_manifest, read_split_table
    from cocoseg.engine.class_balance import repeat_factors

    manifest = read_manifest(tiny_snapshot)
    cfg = load_config(None, ["data.repeat_factor_threshold=0.9"])
    factors = repeat_factors(cfg, manifest)
    rows = read_split_table(tiny_snapshot, "train", columns=["annotations"]).column("annotations").to_pylist()
    assert sum(len(f) for f in factors) == len(rows)
    counts = split_stats(manifest)["classes"]["images"]
    per_class = [max(1.0, math.sqrt(0.9 / (c / len(rows)))) for c in counts]
    want = [max([per_class[a["category"]] for a in anns if not a["iscrowd"]], default=1.0) for anns in rows]
    assert np.concatenate(factors).tolist() == pytest.approx(want, rel=1e-6)
    assert max(want) > 1.0
    assert repeat_factors(load_config(None, []), manifest) is None  # off by default
    first = read_image_classes(list_shards(manifest, "train"), limit=5)
    assert sum(len(s) for s in first) == 5
    limited = repeat_factors(load_config(None, ["data.repeat_factor_threshold=0.9", "data.max_train_images=5"]), manifest)
    assert sum(len(f) for f in limited) == 5


@pytest.mark.extended  # the plan, the factors and the MLflow table each have a fast test above / in test_ingest_class_stats
@pytest.mark.timeout(1200)
def test_two_workers_train_with_repeat_factor_sampling(tiny_snapshot, mlflow_server, tmp_path) -> None:
    """The train job end to end with data.repeat_factor_threshold: both workers step in lockstep over
    the longer epoch, the run logs the class table and chart to MLflow."""
    import mlflow
    from _train_support import TINY

    from cocoseg import tracking
    from cocoseg.data.schema import read_manifest
    from cocoseg.engine.class_balance import repeat_factors
    from pipelines import train

    cfg = load_config(None, [*TINY, f"storage.root={tmp_path}", f"train.snapshot={tiny_snapshot}",
                             "scaling.num_workers=2", "train.epochs=1", "train.close_mosaic=1", "train.preview_images=0",
                             "data.repeat_factor_threshold=1.0", f"tracking.tracking_uri={mlflow_server}",
                             "tracking.experiment=t-rfs", "tracking.run_name=rfs"])
    plain = read_manifest(tiny_snapshot).splits["train"].images
    rows = expected_rows(repeat_factors(cfg, read_manifest(tiny_snapshot)))
    assert rows > plain + 8  # t = 1: every class is below it, so the epoch grows by more than a batch
    result = train.run(cfg)
    (record,) = tracking.read_journal(tracking.journal_uri(result.run_dir))
    per_worker = record["metrics"]["train/batches"]
    assert math.ceil((plain // 2) / 8) < per_worker <= math.ceil((rows / 2 + 4) / 8)
    client = mlflow.tracking.MlflowClient(mlflow_server)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    plots = {a.path for a in client.list_artifacts(result.mlflow_run_id, "plots")}
    assert {"plots/class_stats.json", "plots/class_stats.png"} <= plots
