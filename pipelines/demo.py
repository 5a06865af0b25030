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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cocoseg.config import ConfigError, load_config
from cocoseg.utils import UserError

DEMO_DEFAULTS = [
    "model.variant=n",
    "model.imgsz=128",
    "train.epochs=4",
    "train.batch_size=8",
    "train.close_mosaic=1",
    "train.warmup_epochs=1",
    "train.num_workers=1",
    "export.imgsz=128",
]


def run(root: str, overrides: Sequence[str] = (), images: int = 120) -> dict:
    from pipelines import ingest

    from cocoseg.data.synthetic import write_synthetic_coco

    root = str(Path(root).resolve())
    source = os.path.join(root, "source")
    if not os.path.exists(os.path.join(source, "annotations")):
        print(f"[1/5] synthesising {images} images -> {source}")
        write_synthetic_coco(source, images=images, size=(160, 128), seed=0)
    else:
        print(f"[1/5] synthetic source already at {source}")
    cfg = load_config(None, [f"storage.root={root}", f"ingest.source={source}", *DEMO_DEFAULTS, *overrides])
    print("[2/5] ingest (Ray Data)")
    manifest = ingest.run(cfg)
    return {"snapshot": manifest["snapshot_uri"] if "snapshot_uri" in manifest else manifest["snapshot_id"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".cocoseg", help="local folder used as object storage")
    parser.add_argument("--images", type=int, default=120, help="synthetic images to generate")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides (train.epochs=2 ...)")
    args = parser.parse_args(argv)
    try:
        run(args.root, args.overrides, args.images)
    except (ConfigError, UserError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
