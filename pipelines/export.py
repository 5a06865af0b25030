"""Export job: a trained checkpoint -> a verified export directory (ONNX, TensorRT, latency).

    ray job submit --working-dir . --entrypoint-num-gpus 1 -- python -m pipelines.export \\
        --config pipelines/configs/export.yaml s3://bucket/cocoseg/runs/<run>/best \\
        --out s3://bucket/cocoseg/exports/<run>

(or ``cocoseg export WEIGHTS --out DIR [--formats onnx,engine]``: the same arguments, declared
once in ``cocoseg/jobs/export.py``; ``python -m pipelines.export`` locally). ``--entrypoint-num-gpus 1`` places the driver on a GPU node so the TensorRT engine is
built for that GPU; without ``tensorrt`` or a CUDA device the job says so and exports ONNX only.

Reads: a cocoseg checkpoint folder (``model.safetensors`` + ``model_card.json``, local or
``s3://``) and optionally ``--metrics FILE`` (JSON; else ``<weights>/metrics.json`` if present,
else the card's metrics) and, for ``onnx-int8``, ``--snapshot``'s train split (calibration). Writes: the ``cocoseg.bundle`` layout under ``--out``, ``export.json``
last. Rerun: exports again and replaces the folder's files (the manifest is removed first, so an
interrupted rerun never looks finished). A parity failure fails the job and commits nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import jobs
from cocoseg.export.job import export_checkpoint

__all__ = ["build_parser", "main", "run"]

run = export_checkpoint  # the work: cocoseg.export.job.export_checkpoint(cfg, weights, out, metrics_file, train_run_id, snapshot)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/export.py``, as ``cocoseg export`` has it."""
    return jobs.build_parser("export", "python -m pipelines.export", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
