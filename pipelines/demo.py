"""The whole pipeline on embedded defaults: synthesise -> ingest -> train -> export -> register.

    make demo                      # = python -m pipelines.demo --root .cocoseg
    python -m pipelines.demo --root /tmp/cocoseg-demo [key=value ...]

Everything is local: a private Ray started by the job, a local folder as object storage
(``--root``), MLflow on SQLite under the root (or ``$MLFLOW_TRACKING_URI`` when set). It writes a
small synthetic COCO-Seg dataset of coloured shapes to ``<root>/source``, ingests it into a
Parquet snapshot under ``<root>/snapshots``, trains the n variant for a few epochs at a small
image size, exports ONNX and registers the export as a model version (``champion`` on the first
run). A rerun re-uses the unchanged snapshot (the ingest is a no-op) and trains again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cocoseg import jobs
from cocoseg.jobs.demo import DEMO_CONFIG, champion_version, next_steps, run

__all__ = ["DEMO_CONFIG", "build_parser", "champion_version", "main", "next_steps", "run"]

# the work: cocoseg.jobs.demo.run(root, overrides, images, ui_port=, serve_port=)


def build_parser() -> argparse.ArgumentParser:
    """The job's command line: the one declaration in ``cocoseg/jobs/demo.py``, as ``cocoseg demo`` has it."""
    return jobs.build_parser("demo", "python -m pipelines.demo", __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
