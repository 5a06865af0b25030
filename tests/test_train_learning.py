"""Learning through the whole path: synthetic shapes -> ingest -> Ray Data augmentation ->
2 CPU workers (DDP, gloo) training the n variant at 64 px -> COCO evaluation of the EMA weights.
Validation mask AP50 must rise above 0.5 within a few epochs, and the loss must fall below 0.6x
its first-epoch value.

Settings favour speed on 2 cores, all within the recipe's knobs: AdamW, no warmup (the
classic 100-step warmup floor would cover the whole run), accumulation off (nominal batch =
global batch), and the closed-mosaic preset throughout (mosaic shrinks 64 px shapes to a few
pixels).
"""

from __future__ import annotations

import pytest
from _train_support import TINY, make_snapshot

from cocoseg import tracking
from cocoseg.config import load_config

EPOCHS = 14


@pytest.mark.slow
@pytest.mark.extended  # covered in make test: docs/reliability.md, "extended" table
@pytest.mark.timeout(1800)  # minutes of compute on 2 shared cores; generous for loaded CI hosts
def test_val_mask_ap50_rises_above_half(ray_local, tmp_path):
    from pipelines import train

    snapshot = make_snapshot(tmp_path / "data", images=128, val_fraction=0.25, size=(64, 64), seed=1)
    cfg = load_config(None, [*TINY, f"storage.root={tmp_path}", f"train.snapshot={snapshot}",
                             "scaling.num_workers=2", f"train.epochs={EPOCHS}", f"train.close_mosaic={EPOCHS}",
                             "train.optimizer=AdamW", "train.lr0=0.002", "train.lrf=0.5", "train.warmup_epochs=0",
                             "train.batch_size=4", "train.nominal_batch=8", "train.weight_decay=0", "train.ema_tau=50",
                             "tracking.run_name=learn", "tracking.system_metrics=false",
                             # a worker health check can time out on an overloaded host (seen at load
                             # average 120): resume from the last checkpoint rather than fail
                             "scaling.max_failures=2"])
    result = train.run(cfg)
    curve = [(r["step"], r["metrics"]["train/loss"], r["metrics"]["val/mask_ap50"])
             for r in tracking.read_journal(tracking.journal_uri(result.run_dir))]
    print("\nlearning curve (epoch, train loss, val mask AP50):\n" +
          "\n".join(f"  {e:2d}  {loss:8.3f}  {ap:.3f}" for e, loss, ap in curve))
    # Measured (docs/reproducibility.md, 5 runs at load 6-32): the same curve to the last digit
    # run after run (the input is seeded by (seed, epoch, image id)); max AP50 0.974, crossing
    # 0.5 at epoch 9 of 14.
    assert max(ap for _, _, ap in curve) > 0.5
    # The loss must fall clearly too (a run scoring AP by some accident would not): measured
    # 12.456 -> 5.820 (0.467x) in all 5; the bar at 0.6x leaves room for other thread counts
    # and library versions.
    assert curve[-1][1] < 0.6 * curve[0][1]
