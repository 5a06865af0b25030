"""Register job: one export directory -> one MLflow Model Registry version, then the gate.

    ray job submit --working-dir . -- python -m pipelines.register \\
        s3://bucket/cocoseg/exports/<run> --name cocoseg-yolov8-seg \\
        tracking.tracking_uri=https://mlflow.example.internal registry.promotion_margin=0.005

(or ``cocoseg register EXPORT_DIR --name NAME [--snapshot URI]``: the same arguments, declared
once in ``cocoseg/jobs/register.py``). The gate decides on evidence
(docs/promotion.md): when a snapshot is at hand (``--snapshot``, else the one the export was
evaluated or trained on, under ``storage.root``) the eager model, the served ONNX and the INT8 ONNX
are evaluated in one Ray Data pass on ``evaluate.split`` and registered with those numbers and the
served ONNX's per-image matches; the gate refuses an artifact more than ``registry.max_export_drop``
below its eager model, re-evaluates a champion measured elsewhere on the same images, applies the
per-class guard and promotes only when the paired bootstrap interval's lower bound clears
``registry.promotion_margin``. Without a snapshot the export is registered with its own metrics
and a warning (the point rule; it never beats an evaluated champion). Credentials for a basic-auth
server come from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in the job's environment.

Reads: a committed export directory (``cocoseg.bundle``: every file checked against the
manifest's SHA-256; local or ``s3://``). Writes: an MLflow run, a logged pyfunc model and one new
version of ``--name`` (default ``registry.model_name``) with tags; aliases ``challenger`` and,
when the gate passes, ``champion``. Rerun: registers another version (versions are cheap and
immutable; the gate decides again). A failure leaves no version behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import jobs
from cocoseg.registry.register import register

__all__ = ["build_parser", "main", "run"]

run = register  # the work: cocoseg.registry.register.register(cfg, export_dir, name=None, snapshot="")


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/register.py``, as ``cocoseg register`` has it."""
    return jobs.build_parser("register", "python -m pipelines.register", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
