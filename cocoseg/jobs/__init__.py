"""The jobs, each declared once: one module per job with ``add_arguments(parser)`` and
``run_from_args(args)``, which both front doors use.

    python -m pipelines.<job> ...   (the ``ray job submit`` entrypoint: pipelines/<job>.py calls :func:`main`)
    cocoseg <job> ...               (the console command: cocoseg.cli adds :func:`add_arguments`)

Both doors take the same arguments, parse them the same way (:mod:`.args`: dotted ``key=value``
overrides anywhere, positionals between options, ``--config``, ``--check``, ``--verbose``) and end
the same way (:mod:`.errors`: one line and exit status 2 for bad input). Heavy imports (torch,
Ray) happen inside ``run_from_args``, so building a parser stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Sequence
from types import ModuleType

from .args import JobParser, parse_job_args
from .errors import run_guarded

__all__ = ["JOBS", "add_arguments", "build_parser", "job", "main"]

# OpenMP threads (torch's intra-op pool) wait for work by spinning under libgomp's default policy.
# A job's processes share their host's cores (the driver, the train workers, the input actors, the
# validation tasks), and a spinning thread takes a core from one with work: three 2-thread
# training processes on 2 cores took 23-40 s and 20-37 CPU-s each spinning, 6 s and 8 CPU-s each
# waiting passively (one alone: 3.1 s against 3.3 s). Set here, before any torch import of both
# front doors, for this process and every process it starts (its private Ray's included); a value
# the user set wins. Cluster pods get it from infra/k8s/cocoseg-env.yaml.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# In pipeline order; each is cocoseg/jobs/<name>.py and pipelines/<name>.py.
JOBS = ("ingest", "train", "tune", "evaluate", "infer", "export", "register", "retrain", "demo")


def job(name: str) -> ModuleType:
    """The module that declares job ``name`` (``HELP``, ``DESCRIPTION``, ``add_arguments``, ``run_from_args``)."""
    if name not in JOBS:
        raise KeyError(f"no job {name!r}; jobs: {', '.join(JOBS)}")
    return importlib.import_module(f"{__name__}.{name}")


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Job ``name``'s arguments on ``parser``, and ``args.func`` = its ``run_from_args``."""
    module = job(name)
    module.add_arguments(parser)
    parser.set_defaults(func=module.run_from_args)


def build_parser(name: str, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """The whole command line of job ``name`` run as ``prog`` (``python -m pipelines.<name>``)."""
    parser = JobParser(prog=prog, description=description or job(name).DESCRIPTION)
    add_arguments(name, parser)
    return parser


def main(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) with a job's ``parser`` (:func:`build_parser`) and
    run the job under the one error policy; returns the exit status."""
    import sys

    args = parse_job_args(parser, list(sys.argv[1:] if argv is None else argv))
    return run_guarded(parser.prog, args, args.func)
