"""What the MLflow UI shows for a training run: experiment kind, dataset inputs, the LoggedModel,
per-class AP tables and charts (MLflow 3.17 APIs).

- The experiment carries ``mlflow.experimentKind = custom_model_development``, the tag the UI
  reads to choose its model-training view over the GenAI one.
- The snapshot's train and val splits are the run's dataset inputs (``log_inputs``): name,
  digest = snapshot id, source URI, counts and schema version in the profile.
- The trained weights are a LoggedModel whose source run is the training run: created (PENDING)
  with the run, every epoch's metrics logged against its ``model_id``, ``weights/best`` uploaded
  and READY at the end, linked as the run's output; registry versions point at it
  (``cocoseg.registry``).
- Per-class AP: the validator's ``val/{box,mask}_{ap50_95,ap50}/<class>`` metrics of each
  validated epoch become ``plots/per_class_ap_epochNNN.csv`` and ``.png``.
- PR curves and a confusion matrix of the selected model: the worker writes the best epoch's
  curves (``plots/curves_best.json``: per-class precision at IoU 0.5 over 101 recall points for
  boxes and masks, the box confusion matrix) and :func:`curve_artifacts` draws
  ``plots/pr_curves.png`` and ``plots/confusion_matrix.png`` from it.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocoseg import storage
from cocoseg.utils import get_logger

if TYPE_CHECKING:
    from cocoseg.data.manifest import Manifest

__all__ = ["CURVES_FILE", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "MODEL_ID_TAG", "PER_CLASS_KINDS",
           "create_trained_model", "curve_artifacts", "dataset_inputs", "finish_trained_model", "log_dataset_inputs", "metric_key", "per_class_artifacts",
           "per_class_table", "set_experiment_kind"]

log = get_logger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MODEL_ID_TAG = "cocoseg.model_id"  # run tag: the LoggedModel of the trained weights
PER_CLASS_KINDS = ("box_ap50_95", "box_ap50", "mask_ap50_95", "mask_ap50")
CURVES_FILE = "curves_best.json"  # under the run folder's plots/: what curve_artifacts draws
_PER_CLASS = re.compile(r"^val/(?P<kind>box_ap50_95|box_ap50|mask_ap50_95|mask_ap50)/(?P<cls>.+)$")


def set_experiment_kind(client: Any, experiment_id: str) -> None:
    """Mark the experiment as model training unless someone chose a kind already."""
    exp = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def dataset_inputs(manifest: Manifest, splits: Sequence[str] = ("train", "val")) -> list[dict[str, Any]]:
    """Dataset-input descriptors (JSON-able, kept in the run record) of a snapshot's splits."""
    uri = manifest.snapshot_uri
    out = []
    for split in splits:
        info = manifest.splits[split]
        profile = {"images": info.images, "instances": info.annotations, "shards": [s.to_json() for s in info.shards],
                   "schema_version": manifest.schema_version, "classes": manifest.num_classes}
        out.append({"name": f"cocoseg-{split}", "digest": manifest.snapshot_id[:36],
                    "source_type": "s3" if storage.is_s3(uri) else "local",
                    "source": json.dumps({"uri": storage.join(uri, split)}),
                    "schema": json.dumps({"cocoseg_schema_version": manifest.schema_version,
                                          "class_names": list(manifest.class_names)}),
                    "profile": json.dumps(profile), "context": split})
    return out


def log_dataset_inputs(client: Any, run_id: str, inputs: Iterable[Mapping[str, Any]]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    items = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"],
                                  source=d["source"], schema=d["schema"], profile=d["profile"]),
                          tags=[InputTag("mlflow.data.context", d["context"])]) for d in inputs]
    if not items:
        return
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=items)
            return
        except Exception as exc:  # mlflow's RestException; a lost race is retried, anything else raised
            # Two runs of one snapshot starting together (Tune trials) both insert the dataset: the
            # server's store refuses the second insert; a retry finds the dataset and links it.
            text = str(exc).lower()
            if attempt == 2 or not ("unique constraint" in text or "duplicate key" in text):
                raise
            time.sleep(0.5 * (attempt + 1))


def create_trained_model(client: Any, run_id: str, record: Mapping[str, Any]) -> str:
    """A PENDING LoggedModel for the weights this run will train (its source run is ``run_id``);
    every epoch's metrics are logged against its ``model_id``, so the model page shows them."""
    params = record.get("params", {})
    variant = params.get("model.variant", "")
    run = client.get_run(run_id)
    model = client.create_logged_model(
        experiment_id=run.info.experiment_id, name=f"yolov8{variant}-seg", source_run_id=run_id,
        tags={"snapshot_id": str(record.get("tags", {}).get("snapshot_id", "")), "format": "cocoseg-checkpoint"},
        params={k.split(".", 1)[1]: str(v) for k, v in params.items() if k in ("model.variant", "model.num_classes",
                                                                              "model.imgsz")},
        model_type="yolov8-seg")
    client.set_tag(run_id, MODEL_ID_TAG, model.model_id)
    return model.model_id


def finish_trained_model(client: Any, run_id: str, run_dir: str, model_id: str, step: int) -> None:
    """Upload ``weights/best`` into the LoggedModel, mark it READY (FAILED when the run left no
    weights) and link it as the run's output."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    best = storage.join(run_dir, "weights", "best")
    if not storage.exists(storage.join(best, "model_card.json")):
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
        return
    with tempfile.TemporaryDirectory(prefix="cocoseg-model-") as tmp:
        client.log_model_artifacts(model_id, str(storage.download_dir(best, Path(tmp) / "best")))
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])


def metric_key(key: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . /`` and spaces; class names may hold others."""
    return re.sub(r"[^\w\-./ ]", "_", key)


def per_class_table(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{class: {box_ap50_95, box_ap50, mask_ap50_95, mask_ap50}}`` from ``val/<kind>/<class>`` keys."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        m = _PER_CLASS.match(key)
        if m:
            table.setdefault(m["cls"], {})[m["kind"]] = float(value)
    return dict(sorted(table.items()))


def per_class_artifacts(records: Iterable[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Per validated epoch: ``per_class_ap_epochNNN.csv`` (one row per class) and ``.png`` (bars
    of box and mask AP50-95 and AP50 per class). Epochs without per-class metrics write nothing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for r in sorted(records, key=lambda r: r["step"]):
        table = per_class_table(r["metrics"])
        if not table:
            continue
        stem = out_dir / f"per_class_ap_epoch{int(r['step']):03d}"
        with open(f"{stem}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", *PER_CLASS_KINDS])
            for name, row in table.items():
                writer.writerow([name, *(f"{row[k]:.4f}" if k in row else "" for k in PER_CLASS_KINDS)])
        written += [Path(f"{stem}.csv"), _bar_chart(table, Path(f"{stem}.png"), int(r["step"]))]
    return written


def curve_artifacts(curves: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """``pr_curves.png`` (box and mask precision-recall at IoU 0.5: one thin line per class, the
    mean over classes bold with its mAP50) and ``confusion_matrix.png`` (box matches, each true
    class's column normalised, counts written in the cells) from a ``CURVES_FILE`` document."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    epoch = curves.get("epoch", "?")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, kind in zip(axes, ("box", "mask"), strict=True):
        _pr_panel(ax, curves["pr50"].get(kind, {}), kind, many=len(curves["class_names"]) > 12)
    fig.suptitle(f"precision-recall at IoU 0.5, epoch {epoch} (the selected model)")
    fig.tight_layout()
    pr_path = out_dir / "pr_curves.png"
    fig.savefig(pr_path, dpi=90)
    plt.close(fig)
    return [pr_path, _confusion_chart(curves, out_dir / "confusion_matrix.png")]


def _pr_panel(ax, per_class: Mapping[str, Sequence[float]], kind: str, *, many: bool) -> None:
    import numpy as np

    recall = np.linspace(0.0, 1.0, 101)
    for name, precision in sorted(per_class.items()):
        ax.plot(recall, precision, linewidth=0.8, color="0.6" if many else None,
                label=None if many else f"{name} {float(np.mean(precision)):.3f}")
    if per_class:
        mean = np.mean(np.asarray(list(per_class.values()), dtype=float), axis=0)
        ax.plot(recall, mean, linewidth=2.5, color="tab:blue", label=f"all classes {mean.mean():.3f} mAP50")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=kind)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def _confusion_chart(curves: Mapping[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    names = [*curves["class_names"], "background"]
    counts = np.asarray(curves["confusion"]["matrix"], dtype=float)  # [predicted, true]
    share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1.0)
    size = max(5.0, 0.35 * len(names) + 3)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(xlabel="true", ylabel="predicted")
    if len(names) <= 30:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, f"{int(n)}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    c = curves["confusion"]
    ax.set_title(f"box confusion matrix, epoch {curves.get('epoch', '?')} (conf >= {c['conf']}, IoU >= {c['iou']}; "
                 "columns sum to 1)", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _bar_chart(table: Mapping[str, Mapping[str, float]], path: Path, epoch: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(table)
    x = np.arange(len(names))
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4))
    for i, kind in enumerate(PER_CLASS_KINDS):
        ax.bar(x + (i - 1.5) * width, [table[n].get(kind, 0.0) for n in names], width, label=kind)
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP")
    ax.set_title(f"per-class AP, epoch {epoch}")
    return save_bar_chart(fig, ax, path)


def save_bar_chart(fig: Any, ax: Any, path: Path) -> Path:
    """Finish a bar chart as every chart of the run's ``plots/`` is finished (a small legend, a
    horizontal grid, an 80 dpi PNG at ``path``) and free the figure; returns ``path``."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
