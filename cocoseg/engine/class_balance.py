"""The train job's view of its classes (driver side): the rare-class warning, the MLflow statistics,
and the repeat factors of repeat-factor sampling (``data.repeat_factor_threshold``).
"""

from __future__ import annotations

import numpy as np

from cocoseg.config import JobConfig
from cocoseg.data.class_stats import (
    RARE_INSTANCES,
    class_rows,
    rare_classes,
    read_image_classes,
    split_stats,
)
from cocoseg.data.repeat_factor import class_repeat_factors, expected_rows, image_repeat_factors
from cocoseg.data.schema import Manifest, list_shards
from cocoseg.tracking.class_stats import log_class_stats
from cocoseg.utils import get_logger

__all__ = ["report_classes", "repeat_factors"]

log = get_logger(__name__)


def report_classes(manifest: Manifest, run_dir: str, tracking_uri: str, run_id: str) -> list[str]:
    """Warn about train classes with fewer than ``RARE_INSTANCES`` instances and log the per-class
    table and chart to the MLflow run (:mod:`cocoseg.tracking.class_stats`); -> artifacts logged."""
    if split_stats(manifest, "train") is None:
        log.info("snapshot %s has no per-class statistics (ingested by an older cocoseg): no class "
                 "table, no rare-class check; re-ingest to get them", manifest.snapshot_id)
        return []
    below = rare_classes(manifest, "train")
    absent, rare = [c for c, n in below if n == 0], [(c, n) for c, n in below if n > 0]
    nc = manifest.num_classes
    if rare:
        shown = ", ".join(f"{name} ({n})" for name, n in rare[:12]) + (", ..." if len(rare) > 12 else "")
        log.warning("%d of %d classes have fewer than %d training instances: %s. Their AP rests on a handful "
                    "of instances; add data, or oversample them with data.repeat_factor_threshold "
                    "(docs/data.md)", len(rare), nc, RARE_INSTANCES, shown)
    if absent:
        shown = ", ".join(absent[:12]) + (", ..." if len(absent) > 12 else "")
        log.warning("%d of %d classes have no training instance (the model cannot learn them): %s",
                    len(absent), nc, shown)
    return log_class_stats(class_rows(manifest, "train"), run_dir, tracking_uri, run_id)


def repeat_factors(cfg: JobConfig, manifest: Manifest) -> list[np.ndarray] | None:
    """Per train shard, (rows,) float32 repeat factors; None when ``data.repeat_factor_threshold`` is 0.

    ``f_c`` comes from the manifest's per-class image counts (of the rows used, when
    ``data.max_train_images`` keeps only some, or for a snapshot without statistics: counted from
    the class sets read here). The class sets are read once, from the ``annotations`` column's
    category leaves only.
    """
    t, limit = cfg.data.repeat_factor_threshold, cfg.data.max_train_images
    if t <= 0:
        return None
    classes = read_image_classes(list_shards(manifest, "train"), limit)
    stats, nc = split_stats(manifest, "train"), manifest.num_classes
    images = [c for shard in classes for c in shard]
    if stats is not None and not limit:
        counts, n = stats["classes"]["images"], manifest.splits["train"].images
    else:
        counts = np.zeros(nc, np.int64)
        for c in images:
            counts[np.unique(c)] += 1
        n = len(images)
    per_class = class_repeat_factors(counts, n, t)
    factors = [image_repeat_factors(shard, per_class) for shard in classes]
    boosted = [name for name, r in zip(manifest.class_names, per_class, strict=True) if r > 1]
    log.info("repeat-factor sampling (t=%g): %d of %d classes oversampled (%s), an epoch holds ~%.0f rows "
             "instead of %d", t, len(boosted), nc, ", ".join(boosted[:8]) + (", ..." if len(boosted) > 8 else ""),
             expected_rows(factors), n)
    return factors
