"""Export job: a trained checkpoint -> a verified export directory (ONNX, TensorRT, latency).

    ray job submit --working-dir . --entrypoint-num-gpus 1 -- python -m pipelines.export \\
        --weights s3://bucket/cocoseg/runs/<run>/best --out s3://bucket/cocoseg/exports/<run> \\
        --config pipelines/configs/export.yaml

(or ``cocoseg export WEIGHTS --out DIR [--formats onnx,engine]``; ``python -m pipelines.export``
locally). ``--entrypoint-num-gpus 1`` places the driver on a GPU node so the TensorRT engine is
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

from cocoseg.config import config_path, load_config
from cocoseg.export.job import export_checkpoint
from cocoseg.utils import UserError

__all__ = ["main", "run"]

run = export_checkpoint  # the work: cocoseg.export.job.export_checkpoint(cfg, weights, out, metrics_file, train_run_id, snapshot)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.export", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint folder (local or s3://)")
    parser.add_argument("--out", required=True, help="export directory (local or s3://)")
    parser.add_argument("--metrics", default=None, help="evaluation metrics JSON to carry into the export")
    parser.add_argument("--train-run-id", default="", help="MLflow run id that trained the weights")
    parser.add_argument("--snapshot", default="", help="snapshot whose train split calibrates onnx-int8")
    parser.add_argument("--config", default=None, help="job config YAML")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. export.imgsz=320")
    args = parser.parse_args(argv)
    try:
        run(load_config(config_path(args.config), args.overrides), args.weights, args.out, args.metrics, args.train_run_id,
            args.snapshot)
    except (UserError, ValueError) as exc:
        print(f"pipelines.export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
