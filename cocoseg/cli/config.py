"""``cocoseg config show [--config FILE] [key=value ...] [--section NAME]``: the resolved config as YAML.

Resolved the way every job resolves it (``--config`` found as the jobs find it, then the dotted
overrides, then validation), so what it prints is what ``cocoseg train``/``ingest``/... with the
same arguments would run with. Secrets are redacted (passwords in URIs, secret environment values).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "show"]


def show(config: str | None, overrides: list[str], section: str = "") -> str:
    """The YAML text ``cocoseg config show`` prints (the whole config, or one section)."""
    import yaml

    from cocoseg.config import ConfigError, config_path, load_config, to_dict
    from cocoseg.utils import redact

    doc = redact(to_dict(load_config(config_path(config), overrides)))
    if section:
        if section not in doc:
            raise ConfigError(f"--section {section!r} is not a config section; sections: {', '.join(doc)}")
        doc = {section: doc[section]}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=110)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``config`` (with its one action, ``show``) to the `cocoseg` parser."""
    p = sub.add_parser("config", help="print the resolved, validated job config (YAML, secrets redacted)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("show", help="print the config a job would run with",
                           description="Print the config that a job given the same --config and overrides "
                                       "runs with: defaults, then the file, then the overrides, validated.")
    s.add_argument("--config", default=None, help="job config YAML (e.g. pipelines/configs/train.yaml)")
    s.add_argument("--section", default="", help="print only this section (train, data, model, ...)")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    s.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    print(show(args.config, list(args.overrides), args.section), end="")
    return 0
