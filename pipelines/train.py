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

from cocoseg import jobs
from cocoseg.engine.trainer import TrainResult, train

__all__ = ["TrainResult", "build_parser", "main", "run"]

run = train  # the work: cocoseg.engine.trainer.train(cfg, parent_run_id="", callbacks=())


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/train.py``, as ``cocoseg train`` has it."""
    return jobs.build_parser("train", "python -m pipelines.train", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
