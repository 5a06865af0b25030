"""Scheduled retraining: ingest -> (skip if nothing changed) -> train -> evaluate -> export -> register + gate.

    ray job submit --address http://<head>:8265 --working-dir . -- python -m pipelines.retrain \\
        --config pipelines/configs/retrain.yaml ingest.source=s3://data/coco ingest.dest=s3://data \\
        storage.root=s3://ckpt tracking.tracking_uri=https://mlflow.internal scaling.use_gpu=true

(run on a schedule by ``infra/k8s/retrain-cronjob.yaml`` or ``raycronjob-retrain.yaml``).

Reads: the source dataset (``ingest.source``) and the registry's ``champion`` of
``registry.model_name``. Writes: a new snapshot when the source changed, one training run
(``<storage.root>/runs/<name>``), an export (``<storage.root>/exports/<name>``) and one new
registry version that the metric gate promotes to ``champion`` only if it beats the current one.
Before training, a new snapshot is compared with the champion's (``<storage.root>/retrain/<snapshot>/diff.json``,
also on the training run in MLflow and in the summary): images added / removed / changed,
instances per class, and the champion's AP on the new and changed images alone. Register then
evaluates the eager model and the served artifacts on the new snapshot and gates on evidence
(docs/promotion.md).

Rerun: when ingest finds the source unchanged (no new snapshot) and the champion was trained on
that snapshot, the job says so and exits 0 without starting any training (``retrain.force=true``
trains anyway). Training warm-starts from the champion's weights (``retrain.warm_start``) when
the champion has the same variant and class count; otherwise it starts from ``model.weights``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg.config import ConfigError, config_path, load_config
from cocoseg.retrain import retrain
from cocoseg.utils import UserError

__all__ = ["main", "run"]

run = retrain  # the work: cocoseg.retrain.retrain(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.retrain", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="job config YAML (e.g. pipelines/configs/retrain.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides))
    except (ConfigError, UserError) as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
