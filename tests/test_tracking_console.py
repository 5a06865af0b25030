"""The per-epoch console line, the journal follower that prints it, per-class AP artifacts, and the
one Ray start helper's retry and its one-line report."""

from __future__ import annotations

import csv
import io

import pytest

from cocoseg import tracking
from cocoseg.tracking.console import format_duration

EPOCH = {"train/loss": 4.2134, "train/loss_box": 1.1021, "train/loss_cls": 1.5203, "train/loss_dfl": 0.9801,
         "train/loss_mask": 0.6109, "lr/bias": 0.002, "lr/weight": 0.002, "lr/norm": 0.002,
         "train/images_per_s": 181.6, "val/box_ap50_95": 0.1234, "val/box_ap50": 0.3011,
         "val/mask_ap50_95": 0.1012, "val/mask_ap50": 0.2883, "train/epoch_time_s": 10.1, "val/time_s": 2.2}


def test_epoch_line_holds_every_figure_a_person_looks_for():
    line = tracking.epoch_line(2, 12, EPOCH, eta_s=111)
    assert line == ("epoch  3/12  loss 4.213 (box 1.102 cls 1.520 dfl 0.980 mask 0.611)  lr 0.00200  182 img/s  "
                    "box AP 0.123 AP50 0.301  mask AP 0.101 AP50 0.288  12.3 s  ETA 1m51s")
    no_val = {k: v for k, v in EPOCH.items() if not k.startswith("val/")}
    last = tracking.epoch_line(11, 12, no_val, eta_s=0)
    assert "AP" not in last and "ETA" not in last and last.startswith("epoch 12/12")
    assert [format_duration(s) for s in (42, 75, 3725)] == ["42s", "1m15s", "1h02m"]


def test_printer_prints_each_new_epoch_once_and_skips_a_resumes_old_ones():
    records = [{"step": 0, "metrics": EPOCH}]
    out = io.StringIO()
    printer = tracking.EpochPrinter(lambda: list(records), epochs=3, interval_s=60, out=out)
    with printer:
        records.append({"step": 1, "metrics": EPOCH})
        printer.poll()
        printer.poll()
        records.append({"step": 2, "metrics": EPOCH})
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 2/3", "epoch 3/3"]
    assert "ETA" in lines[0] and "ETA" not in lines[1]


def test_printer_prints_epochs_as_their_validation_arrives_and_says_when_it_failed():
    """Asynchronous validation: epoch 1's record arrives before epoch 0's; each line is printed
    when its record arrives, once, and a failed validation says so with its reason."""
    records = []
    out = io.StringIO()
    printer = tracking.EpochPrinter(lambda: list(records), epochs=3, interval_s=60, out=out)
    with printer:
        records.append({"step": 1, "metrics": EPOCH})
        printer.poll()
        records.append({"step": 0, "metrics": {"train/loss": 5.0, "val/failed": 1.0},
                        "validation_error": "RayActorError: the actor died"})
        printer.poll()
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 2/3", "epoch 1/3"]
    assert "validation FAILED (RayActorError: the actor died)" in lines[1] and "FAILED" not in lines[0]


def _per_class(epoch: int, scale: float) -> dict:
    metrics = {"val/mask_ap50_95": 0.3 * scale}
    for i, name in enumerate(("circle", "square", "traffic light")):
        metrics.update({f"val/box_ap50_95/{name}": 0.1 * (i + 1) * scale, f"val/box_ap50/{name}": 0.2 * (i + 1) * scale,
                        f"val/mask_ap50_95/{name}": 0.05 * (i + 1) * scale,
                        f"val/mask_ap50/{name}": 0.15 * (i + 1) * scale})
    return {"step": epoch, "metrics": metrics}


def test_per_class_ap_table_and_chart_per_validated_epoch(tmp_path):
    records = [_per_class(0, 1.0), {"step": 1, "metrics": {"train/loss": 1.0}}, _per_class(2, 2.0)]
    paths = tracking.per_class_artifacts(records, tmp_path)
    assert sorted(p.name for p in paths) == ["per_class_ap_epoch000.csv", "per_class_ap_epoch000.png",
                                             "per_class_ap_epoch002.csv", "per_class_ap_epoch002.png"]
    rows = list(csv.DictReader(open(tmp_path / "per_class_ap_epoch002.csv")))
    assert [r["class"] for r in rows] == ["circle", "square", "traffic light"]
    assert float(rows[2]["mask_ap50"]) == pytest.approx(0.9) and float(rows[0]["box_ap50_95"]) == pytest.approx(0.2)
    assert (tmp_path / "per_class_ap_epoch000.png").read_bytes()[:4] == b"\x89PNG"
    table = tracking.per_class_table(records[2]["metrics"])
    assert set(table["square"]) == {"box_ap50_95", "box_ap50", "mask_ap50_95", "mask_ap50"}


def test_pr_curves_and_confusion_matrix_are_drawn_from_the_best_epochs_curves(tmp_path):
    from PIL import Image

    from cocoseg.tracking.ui import curve_artifacts

    recall = [i / 100 for i in range(101)]
    curves = {"epoch": 7, "class_names": ["circle", "square"],
              "pr50": {"box": {"circle": [1 - 0.5 * r for r in recall], "square": [1.0] * 101},
                       "mask": {"circle": [1 - r for r in recall]}},
              "confusion": {"conf": 0.25, "iou": 0.45, "matrix": [[5, 1, 2], [0, 3, 0], [1, 0, 0]]}}
    paths = curve_artifacts(curves, tmp_path)
    assert [p.name for p in paths] == ["pr_curves.png", "confusion_matrix.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 400, image.size


def test_ray_start_is_retried_once_then_reported_in_one_line(monkeypatch):
    import ray

    from cocoseg import cluster as _ray

    calls = []

    def failing_init(**kwargs):
        calls.append(kwargs)
        raise Exception("The current node timed out during startup. This could happen because ...\nmore")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(_ray.RayStartError) as err:
        _ray.start_ray(address="local", num_cpus=2)
    assert len(calls) == 2
    message = str(err.value)
    assert "\n" not in message and "timed out during startup" in message and "after 2 tries" in message
    assert "uptime" in message and "/tmp/ray" in message

    outcomes = iter([Exception("The current node timed out during startup."), None])

    def flaky_init(**kwargs):
        calls.append(kwargs)
        exc = next(outcomes)
        if exc:
            raise exc

    calls.clear()
    monkeypatch.setattr(ray, "init", flaky_init)
    _ray.start_ray(address="local")
    assert len(calls) == 2 and calls[1]["log_to_driver"] is True


def test_a_private_local_ray_starts_without_the_preemption_watcher_and_leaves_the_environment(tmp_path):
    """A real private local Ray (a subprocess of its own): its workers see LOCAL_RAY_ENV (no Ray
    Train preemption watcher on a one-node Ray that dies with its driver), the driver's own
    environment does not keep it."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, os, ray\n"
        "from cocoseg.cluster import LOCAL_RAY_ENV, start_ray\n"
        "start_ray(address='local', num_cpus=1, include_dashboard=False)\n"
        "key = next(iter(LOCAL_RAY_ENV))\n"
        "worker = ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get(key)).remote())\n"
        "print(json.dumps({'worker': worker, 'driver': os.environ.get(key)}))\n"
        "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run() == {"worker": "0", "driver": None}


def test_a_value_the_user_set_wins_over_the_local_ray_environment(monkeypatch):
    import os

    from cocoseg.cluster import _inherited_env

    monkeypatch.setenv("A_SET", "user")
    monkeypatch.delenv("B_UNSET", raising=False)
    with _inherited_env({"A_SET": "0", "B_UNSET": "0"}):
        assert (os.environ["A_SET"], os.environ["B_UNSET"]) == ("user", "0")
    assert os.environ["A_SET"] == "user" and "B_UNSET" not in os.environ
