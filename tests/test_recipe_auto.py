"""``train.optimizer=auto`` (spec 9.2): the resolver, and that the optimiser and the schedule a
run builds follow it (plain PyTorch, no Ray)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from cocoseg.config import ConfigError, load_config
from cocoseg.engine.build import build_schedule, build_train_parts, resolve_recipe
from cocoseg.engine.optim import (
    AUTO_MAX_ITERATIONS,
    OptimizerChoice,
    lr_factor,
    resolve_optimizer,
    scaled_weight_decay,
)
from cocoseg.model import build_model
from pipelines import config_path

torch.set_num_threads(1)

CONFIGURED = {"lr0": 0.01, "momentum": 0.937, "warmup_bias_lr": 0.1}


def auto(train_images: int, *, global_batch: int = 16, nominal_batch: int = 64, epochs: int = 30, num_classes: int = 4):
    return resolve_optimizer("auto", **CONFIGURED, train_images=train_images, global_batch=global_batch,
                             nominal_batch=nominal_batch, epochs=epochs, num_classes=num_classes)


def test_auto_picks_adamw_for_a_short_run_and_says_why():
    choice = auto(240)  # ceil(240 / 64) * 30 = 120 iterations
    assert (choice.name, choice.lr0, choice.momentum, choice.warmup_bias_lr) == ("AdamW", 0.00125, 0.9, 0.0)
    line = choice.describe("auto")
    assert line.startswith("optimizer auto -> AdamW(lr=0.00125, momentum=0.9): 120 iterations")
    assert f"<= {AUTO_MAX_ITERATIONS}" in line


def test_auto_adamw_lr_depends_on_the_class_count():
    assert auto(240, num_classes=80).lr0 == 0.000119  # round(0.002 * 5 / 84, 6)
    assert auto(240, num_classes=1).lr0 == 0.002


def test_auto_picks_sgd_for_a_long_run():
    choice = auto(118_287, global_batch=64, epochs=500, num_classes=80)  # full COCO
    assert (choice.name, choice.lr0, choice.momentum, choice.warmup_bias_lr) == ("SGD", 0.01, 0.9, 0.0)
    assert "924500 iterations" in choice.reason and f"> {AUTO_MAX_ITERATIONS}" in choice.reason


def test_auto_boundary_is_ten_thousand_iterations_inclusive():
    # one epoch of 64-image steps: exactly 10000 steps stays AdamW, one image more is SGD
    assert auto(64 * 10_000, epochs=1).name == "AdamW"
    assert auto(64 * 10_000 + 1, epochs=1).name == "SGD"
    assert auto(64 * 100, epochs=100).name == "AdamW"
    assert auto(64 * 100, epochs=101).name == "SGD"


def test_auto_counts_steps_of_the_larger_of_global_and_nominal_batch():
    images = 64 * 10_000 * 2  # 20000 steps of the nominal 64, 10000 of a global 128
    assert auto(images, epochs=1, global_batch=16).name == "SGD"
    assert auto(images, epochs=1, global_batch=128).name == "AdamW"


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_an_explicit_optimizer_keeps_the_configured_values(name):
    choice = resolve_optimizer(name, lr0=0.02, momentum=0.95, warmup_bias_lr=0.05, train_images=240,
                               global_batch=16, nominal_batch=64, epochs=30, num_classes=4)
    assert (choice.name, choice.lr0, choice.momentum, choice.warmup_bias_lr) == (name, 0.02, 0.95, 0.05)
    assert choice.reason == "set in the config"


def test_config_default_is_auto_and_typos_are_refused():
    assert load_config(None).train.optimizer == "auto"
    with pytest.raises(ConfigError, match=r"train.optimizer: 'sgd' is not one of 'auto', 'SGD'"):
        load_config(None, ["train.optimizer=sgd"])


def test_the_written_coco_recipe_stays_explicit_sgd():
    t = load_config(config_path("pipelines/configs/train.yaml")).train
    assert (t.optimizer, t.lr0, t.momentum, t.warmup_bias_lr) == ("SGD", 0.01, 0.937, 0.1)


def _parts(overrides: list[str], train_images: int, batches: int):
    cfg = load_config(None, ["model.num_classes=4", "train.epochs=30", "train.batch_size=16", *overrides])
    torch.manual_seed(0)
    model = build_model("n", 4)
    return cfg, build_train_parts(cfg, model=model, device=torch.device("cpu"), world_size=1,
                                  batches_per_epoch=batches, train_images=train_images)


def test_default_recipe_builds_adamw_and_a_schedule_without_bias_warmup():
    cfg, parts = _parts([], train_images=240, batches=15)
    opt, sched = parts.optimizer, parts.schedule
    assert type(opt) is torch.optim.AdamW
    assert [g["initial_lr"] for g in opt.param_groups] == [0.00125] * 3
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, pytest.approx(5e-4), 0.0]
    assert (sched.lr0, sched.momentum, sched.warmup_bias_lr) == (0.00125, 0.9, 0.0)
    first = sched.at(0)
    assert first.lrs == (0.0, 0.0, 0.0)  # the bias group warms up from 0 like the others
    after = sched.warmup_steps + 1
    assert sched.at(after).lrs == (pytest.approx(0.00125 * lr_factor(after // 15, 30, 0.01, False)),) * 3
    assert build_schedule(cfg, world_size=1, batches=15) == sched  # resolved from batches alone too


def test_auto_on_a_long_run_builds_sgd_with_the_resolved_values():
    _, parts = _parts([], train_images=100_000, batches=6250)  # 1563 steps x 30 epochs
    opt, sched = parts.optimizer, parts.schedule
    assert type(opt) is torch.optim.SGD and all(g["nesterov"] for g in opt.param_groups)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.01] * 3
    assert (sched.lr0, sched.momentum, sched.warmup_bias_lr) == (0.01, 0.9, 0.0)


def test_explicit_sgd_builds_the_classic_recipe():
    _, parts = _parts(["train.optimizer=SGD", "train.batch_size=24"], train_images=240, batches=10)
    opt, sched = parts.optimizer, parts.schedule
    assert type(opt) is torch.optim.SGD
    assert all(g["momentum"] == 0.937 for g in opt.param_groups)
    assert (sched.lr0, sched.momentum, sched.warmup_bias_lr) == (0.01, 0.937, 0.1)
    assert sched.at(0).lrs[0] == pytest.approx(0.1)
    # batch 24 accumulates round(64/24) = 3 micro-batches: decay scaled by 24 * 3 / 64
    assert opt.param_groups[1]["weight_decay"] == pytest.approx(scaled_weight_decay(5e-4, 64, 24))
    assert opt.param_groups[1]["weight_decay"] == pytest.approx(5e-4 * 72 / 64)


def test_resolve_recipe_uses_the_global_batch_and_the_class_count():
    cfg = load_config(None, ["model.num_classes=80", "train.epochs=100", "train.batch_size=32"])
    # 4 workers x 32 = 128 per step: ceil(12800 / 128) * 100 = 10000 -> AdamW; one worker: 200 * 100 -> SGD
    assert resolve_recipe(cfg, world_size=4, train_images=12_800).name == "AdamW"
    assert resolve_recipe(cfg, world_size=4, train_images=12_800).lr0 == 0.000119
    assert resolve_recipe(cfg, world_size=1, train_images=12_800).name == "SGD"


def test_a_choice_made_by_the_driver_is_used_as_is():
    # the driver resolves once and ships the choice to the workers (RunInfo.recipe, pickled)
    decided = resolve_optimizer("auto", **CONFIGURED, train_images=240, global_batch=16, nominal_batch=64,
                                epochs=30, num_classes=4)
    shipped = OptimizerChoice(**asdict(decided))
    cfg = load_config(None, ["model.num_classes=4", "train.epochs=30"])
    torch.manual_seed(0)
    # a restarted worker group of another size still builds the run's optimiser
    parts = build_train_parts(cfg, model=build_model("n", 4), device=torch.device("cpu"), world_size=4,
                              batches_per_epoch=20_000, choice=shipped)
    assert type(parts.optimizer) is torch.optim.AdamW
    assert (parts.schedule.lr0, parts.schedule.warmup_bias_lr) == (0.00125, 0.0)


def test_warmup_min_steps_sets_the_warmup_floor_and_is_checked():
    # 15 batches x 3 warm-up epochs = 45 micro-batches; the floor lengthens it, 0 leaves it
    assert _parts([], train_images=240, batches=15)[1].schedule.warmup_steps == max(45, load_config(None).train.warmup_min_steps)
    assert _parts(["train.warmup_min_steps=100"], train_images=240, batches=15)[1].schedule.warmup_steps == 100
    assert _parts(["train.warmup_min_steps=0"], train_images=240, batches=15)[1].schedule.warmup_steps == 45
    with pytest.raises(ConfigError, match=r"train.warmup_min_steps"):
        load_config(None, ["train.warmup_min_steps=-1"])
