"""CLI sub-commands: export, register, promote, rollback."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
