"""The training data's per-class statistics in MLflow: a table artifact and a bar chart.

``plots/class_stats.json`` is an MLflow table (the file and tag ``MlflowClient.log_table`` writes:
the UI shows it as a table, ``MlflowClient.load_table`` reads it back) with one row per class (images, instances, COCO
small/medium/large instances; see :mod:`cocoseg.data.class_stats`); ``plots/class_stats.png``
draws the instances per class, small/medium/large stacked, classes sorted by count, with the
rare-class line (:data:`cocoseg.data.class_stats.RARE_INSTANCES`).

Both files are also written to the run folder's ``plots/``, so a run that started while MLflow
was down gets them with its other artifacts when it is completed (``cocoseg sync-mlflow``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cocoseg import storage
from cocoseg.data.class_stats import COLUMNS, RARE_INSTANCES
from cocoseg.utils import get_logger

from . import journal as jr
from .ui import save_bar_chart

__all__ = ["TABLE_FILE", "CHART_FILE", "class_stats_chart", "log_class_stats"]

log = get_logger(__name__)

TABLE_FILE = "plots/class_stats.json"
CHART_FILE = "plots/class_stats.png"
_LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # mlflow.utils.mlflow_tags.MLFLOW_LOGGED_ARTIFACTS


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    return {"class": [r["class"] for r in rows], **{k: [int(r[k]) for r in rows] for k in COLUMNS}}


def class_stats_chart(rows: Sequence[Mapping[str, Any]], path: Path, split: str = "train") -> Path:
    """Bar chart of instances per class (small / medium / large stacked), most frequent first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted(rows, key=lambda r: (-r["instances"], r["class"]))
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.22 * len(rows) + 2)), 4.2))
    bottom = np.zeros(len(rows))
    for kind in ("small", "medium", "large"):
        values = np.asarray([r[kind] for r in rows], float)
        ax.bar(x, values, 0.8, bottom=bottom, label=kind)
        bottom += values
    ax.axhline(RARE_INSTANCES, color="red", lw=0.8, ls="--", label=f"{RARE_INSTANCES} instances (rare)")
    ax.set_xticks(x, [r["class"] for r in rows], rotation=90, fontsize=7 if len(rows) > 20 else 9)
    if rows and max(r["instances"] for r in rows) > 50 * max(1, min(r["instances"] for r in rows)):
        ax.set_yscale("symlog", linthresh=10)  # COCO: 262k persons, 200 hair driers
    ax.set_ylabel("instances")
    ax.set_title(f"{split} split: instances per class (COCO size buckets)")
    return save_bar_chart(fig, ax, path)


def _mark_table(client: Any, run_id: str) -> None:
    """Tag the JSON as a table artifact, as ``log_table`` does (which would append to an existing
    file: a resumed run would hold its rows twice); the UI and ``load_table`` find it by this tag."""
    tags = client.get_run(run_id).data.tags
    logged = json.loads(tags.get(_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": TABLE_FILE, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, _LOGGED_ARTIFACTS, json.dumps([*logged, entry]))


def log_class_stats(rows: Sequence[Mapping[str, Any]], run_dir: str, tracking_uri: str, run_id: str,
                    split: str = "train") -> list[str]:
    """Write the table and the chart to ``run_dir/plots/`` and, when ``run_id`` is set, log them to
    the run now (before training spends any time). Returns the artifact paths logged to MLflow.

    An MLflow error here is logged, never raised: the statistics are not worth a failed run.
    """
    if not rows:
        return []
    columns = _columns(rows)
    with tempfile.TemporaryDirectory(prefix="cocoseg-classes-") as tmp:
        chart = class_stats_chart(rows, Path(tmp) / "class_stats.png", split)
        table = {"columns": list(columns), "data": [list(r) for r in zip(*columns.values(), strict=True)]}
        storage.write_text(storage.join(run_dir, *TABLE_FILE.split("/")), json.dumps(table, indent=1))
        storage.write_bytes(storage.join(run_dir, *CHART_FILE.split("/")), chart.read_bytes())
        if not run_id:
            return []
        try:
            client = jr._client(tracking_uri)
            (Path(tmp) / "class_stats.json").write_text(json.dumps(table))
            client.log_artifact(run_id, str(Path(tmp) / "class_stats.json"), artifact_path="plots")
            client.log_artifact(run_id, str(chart), artifact_path="plots")
            _mark_table(client, run_id)
        except Exception as exc:  # noqa: BLE001 - any MLflow/transport error: keep training
            log.warning("could not log the class statistics to MLflow run %s (%s); they are in %s/plots",
                        run_id, exc, run_dir)
            return []
    return [TABLE_FILE, CHART_FILE]
