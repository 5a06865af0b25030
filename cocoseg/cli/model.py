"""CLI sub-commands: model-info, import-weights, predict."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    register_predict(sub)


# ---------------------------------------------------------------------------------------------
# `cocoseg predict` (owned by the post-processing area; the implementation is in cli/predict.py).


def register_predict(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    from . import predict

    predict.register(sub)
