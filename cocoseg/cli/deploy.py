"""CLI sub-commands: promote, rollback (the export and register jobs are cocoseg.jobs.export / .register)."""

from __future__ import annotations

import argparse

from cocoseg.jobs.args import job_config


def _client(args: argparse.Namespace):
    from cocoseg.registry import connect
    from cocoseg.tracking import resolve_tracking_uri

    cfg = job_config(args)
    return connect(resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root))


def _promote(args: argparse.Namespace) -> int:
    from cocoseg.registry import promote

    previous = promote(_client(args), args.name, args.version, reason=args.reason)
    print(f"{args.name}@champion -> v{args.version} (was {'v' + previous if previous else 'unset'})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from cocoseg.registry import rollback

    old, new = rollback(_client(args), args.name)
    print(f"{args.name}@champion -> v{new} (rolled back from v{old})")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="job config YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tracking.tracking_uri=...")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands to the `cocoseg` parser."""
    p = sub.add_parser("promote", help="make VERSION the champion by hand (no gate)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--reason", default="", help="recorded in the gate.reason tag; required to override "
                   "the per-class guard's refusal")
    _common(p)
    p.set_defaults(func=_promote)

    p = sub.add_parser("rollback", help="point champion back at the version it replaced")
    p.add_argument("name")
    _common(p)
    p.set_defaults(func=_rollback)
