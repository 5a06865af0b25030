"""The capacity model and the train job's dry-run feed check (issue 15): pure functions of the config
(and the GPU kind, which ``check_cluster`` reads from Ray's ``accelerator_type:`` resources), so no
Ray and no GPU are needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoseg.config import load_config
from cocoseg.engine import capacity, checks
from cocoseg.engine.checks import TrainInputError

REPO = Path(__file__).resolve().parents[1]


def check_feed(cfg, gpu: str = "A100") -> str:
    """The job's call: the sections the check reads (engine/checks.py)."""
    return checks.check_feed(cfg.train, cfg.model, cfg.scaling, cfg.data, gpu)


def test_checks_take_sections_and_name_them_when_given_the_whole_config():
    with pytest.raises(TypeError) as err:
        checks.check_feed(_cfg())
    assert "\n" not in str(err.value) and "check_feed(cfg.train, cfg.model, cfg.scaling, cfg.data)" in str(err.value)


def _cfg(*overrides: str):
    return load_config(None, ["scaling.use_gpu=true", "model.imgsz=640", "train.augment=yolov8", *overrides])


def test_gpu_figures_follow_the_flops_and_cores_per_gpu_fall_with_size():
    rates = [capacity.gpu_images_per_s(v) for v in "nsmlx"]
    assert rates == sorted(rates, reverse=True)
    cores = [capacity.feed_plan(variant=v, gpus=1, imgsz=640, preset="yolov8", data_actors=1,
                                data_cpus_per_actor=1).cores_needed for v in "nsmlx"]
    # the input stage of issue 21 (bench_augment.py): an A100 of n takes ~5 cores (the Pillow stage: 11.5), x under one
    assert 3 < cores[0] < 8 and cores[-1] < 1.0
    assert capacity.CPU_MS_PER_IMAGE["yolov8"] < 0.5 * 16.1  # at most half the Pillow stage's measured cost
    h100 = capacity.feed_plan(variant="n", gpus=1, imgsz=640, preset="yolov8", data_actors=1, data_cpus_per_actor=1,
                              gpu="H100").cores_needed
    assert h100 == pytest.approx(cores[0] * 989 / 312) and h100 < 16  # a p5's 12 physical cores per H100: s, m, l, x
    # smaller inputs: the GPU's fixed per-image cost bounds the rate, mosaic still decodes full size
    assert capacity.gpu_images_per_s("n", 64) < 2 * capacity.gpu_images_per_s("n", 640)
    assert capacity.cpu_ms_per_image("yolov8", 128) > capacity.DECODE_MS_PER_IMAGE


def test_feed_check_refuses_a_starved_gpu_naming_the_keys_and_the_fix():
    cfg = _cfg("model.variant=n", "scaling.num_workers=2", "data.actors=2")
    with pytest.raises(TrainInputError) as err:
        check_feed(cfg)
    text = str(err.value)
    need = capacity.feed_plan(variant="n", gpus=2, imgsz=640, preset="yolov8", data_actors=2,
                              data_cpus_per_actor=1).actors_needed
    assert "\n" not in text and "data.actors=2" in text and "model.variant=n" in text
    assert f"set data.actors={need} " in text
    assert check_feed(_cfg("model.variant=n", "scaling.num_workers=2", f"data.actors={need}")) == ""


def test_feed_check_warns_on_a_small_shortfall_and_ignores_cpu_runs():
    warning = check_feed(_cfg("model.variant=m", "scaling.num_workers=3", "data.actors=2"))
    assert warning.startswith("data.actors=2 x data.cpus_per_actor=1") and "wait" in warning
    assert check_feed(_cfg("model.variant=m", "scaling.num_workers=1", "data.actors=2")) == ""
    assert check_feed(load_config(None, ["scaling.use_gpu=false", "model.variant=n", "data.actors=1"])) == ""
    # a slower GPU (Ray's accelerator_type:L4) takes fewer images: the same actors now keep up
    cfg = _cfg("model.variant=s", "scaling.num_workers=1", "data.actors=1")
    assert check_feed(cfg, "A100") != "" and check_feed(cfg, "L4") == ""
    assert capacity.gpu_kind("NVIDIA L40S") == "L40S" and capacity.gpu_kind("unknown") == "A100"


def test_run_plan_for_a_day_of_coco():
    for variant in ("n", "x"):
        for node in ("g6.12xlarge", "p4d.24xlarge"):
            plan = capacity.run_plan(variant, node)
            assert plan.hours <= 24 and plan.gpus == plan.gpu_nodes * capacity.NODE_TYPES[node].gpus
            cfg = _cfg(f"model.variant={variant}", f"scaling.num_workers={plan.gpus}",
                       f"data.actors={plan.data_actors}")
            assert check_feed(cfg, capacity.NODE_TYPES[node].gpu) == ""  # the plan passes the job's own check
            assert plan.s3_mb_per_s_per_cpu_node <= capacity.S3_MB_PER_S_PER_NODE


def test_scaling_doc_carries_the_modules_figures():
    doc = (REPO / "docs" / "scaling.md").read_text()
    assert capacity._table() in doc and capacity._plan_table() in doc


def test_shipped_gpu_configs_pass_the_feed_check_on_l4():
    """pipelines/configs/{train,retrain}.yaml: 4 L4s of n; tune.yaml: 2 per trial (docs/scaling.md, section 4)."""
    for name in ("train", "retrain", "tune"):
        cfg = load_config(REPO / "pipelines" / "configs" / f"{name}.yaml", [])
        if cfg.scaling.use_gpu:
            assert check_feed(cfg, "L4") == "", name
