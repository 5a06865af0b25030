"""Train a YOLOv8-seg variant on a Parquet snapshot with Ray Train (DDP over N workers, M nodes).

    ray job submit --address http://<head>:8265 --working-dir . -- python -m pipelines.train \\
        --config pipelines/configs/train.yaml train.snapshot=s3://bucket/cocoseg/snapshots/<id> \\
        storage.root=s3://bucket/cocoseg scaling.num_workers=4 scaling.use_gpu=true

(or ``cocoseg train ...``; ``python -m pipelines.train`` starts a private local Ray unless
``RAY_ADDRESS`` names a cluster). Reads the snapshot's ``train`` split (decoded and augmented
by Ray Data on CPU, streamed to the workers) and ``val`` split (letterboxed by rank 0). Writes ``<storage.root>/runs/<run name>/``: Ray's
checkpoints (for resume), ``weights/{best,last}`` (cocoseg model checkpoints),
``tracking/metrics.jsonl``, ``plots/``, ``workers/`` and ``config.json``; one MLflow run.

Rerun with the same ``tracking.run_name``: a resume from the run's latest checkpoint (a worker
lost mid-run is replaced in place by ``FailureConfig(max_failures)``). Bad input (missing or
unknown snapshot, empty split, more workers/GPUs than the cluster can place, unknown config
key) is refused before any worker starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg.config import ConfigError, config_path, load_config
from cocoseg.engine.trainer import TrainResult, train
from cocoseg.utils import UserError, redact, set_verbose

__all__ = ["TrainResult", "main", "run"]

run = train  # the work: cocoseg.engine.trainer.train(cfg, parent_run_id="", callbacks=())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="job config YAML")
    parser.add_argument("--parent-run-id", default="", help="nest the MLflow run under this run")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and pycocotools' own output too")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)
    try:
        result = run(load_config(config_path(args.config), args.overrides), parent_run_id=args.parent_run_id)
    except (ConfigError, UserError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    print(redact(f"MLflow run {result.mlflow_run_id} at {result.tracking_uri}; best weights {result.best_weights}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
