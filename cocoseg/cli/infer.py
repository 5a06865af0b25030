"""``cocoseg infer WEIGHTS SOURCE --out DEST``: predictions for a folder, ``s3://`` prefix or snapshot of images.

The same code as the ``ray job submit`` entrypoint ``pipelines/infer.py``: Ray Data reads the
images, an actor pool runs the one predictor (EXIF orientation applied, ``evaluate.predict_conf``)
and DEST gets one Parquet file per chunk of images (one row per image: boxes, scores, classes,
class names, masks as COCO RLE, and an ``error`` for an image that could not be read) plus
``_manifest.json`` written last. A rerun with the same weights over the same source is a no-op;
a run that was stopped resumes where it left off.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="batch predictions for a folder/s3:// prefix/snapshot of images (Ray Data)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="checkpoint folder (local or s3://) or models:/NAME@ALIAS")
    p.add_argument("source", help="folder or s3:// prefix of images, or a snapshot folder")
    # argparse cannot take positionals after an option, so `--out DEST key=value ...` (the documented
    # form) gives the overrides to --out; _run splits them off again.
    p.add_argument("--out", required=True, nargs="+", metavar=("DEST", "KEY=VALUE"),
                   help="output folder (local or s3://), then any overrides")
    p.add_argument("--split", default="", help="snapshot split to run on (default: every split)")
    p.add_argument("--config", default=None, help="job config YAML (its evaluate section)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. evaluate.chunk_images=512")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cocoseg.batch.infer import infer
    from cocoseg.config import config_path, load_config

    dest, *extra = args.out
    infer(load_config(config_path(args.config), [*args.overrides, *extra]), args.weights, args.source, dest,
            split=args.split)
    return 0
