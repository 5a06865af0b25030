"""The one way every job (and ``make demo``) starts or joins Ray, and how quiet Ray is.

:func:`start_ray` retries a start-up that timed out once (a loaded host sometimes misses Ray's
start-up deadline), then reports one line saying what to check; it never shows Ray's traceback.

Quiet by default (``--verbose`` or ``COCOSEG_VERBOSE=1`` turns each of these back on):

- Ray's driver log level is WARNING (no "Started a local Ray instance" banner);
- Ray Train's own console logs (``Reporting training result N: TrainingReport(...)`` per epoch)
  are off: :func:`train_logging_config` is ``LoggingConfig(log_level="WARNING")``;
- Train V2's print patch, which shows every worker ``print`` twice, is off
  (``RAY_TRAIN_ENABLE_PRINT_PATCH=0`` in the environment a local Ray inherits);
- Ray Data's execution plans (``DataContext.print_on_execution_start``) and its progress bars
  (``enable_progress_bars``) are off; the training progress bar is our own (``tqdm_ray``);
- worker output reaches the driver (``log_to_driver``) through a filter
  (:func:`_filter_worker_output`): the progress bar and cocoseg's own warnings and errors pass,
  Ray's internal chatter (C++ log lines, per-report lines, a ``PlacementGroupCleaner`` traceback
  when another Ray runs on the host) does not; a failing worker still fails the job with its error;
- the driver's Ray, Ray Data and MLflow loggers say only what is at WARNING (Ray: ERROR) or above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cocoseg.utils import UserError, get_logger, restore_env, verbose

__all__ = ["RayStartError", "StallWatch", "quiet_ray_data", "release_placement_groups", "start_ray",
           "train_logging_config"]

# cocoseg's own log lines (``HH:MM:SS LEVEL cocoseg.x: ...``, cocoseg.utils.get_logger) that a
# worker's output may carry to the driver when Ray is quiet.
_KEPT_WORKER_LEVELS = (" WARNING cocoseg", " ERROR cocoseg", " CRITICAL cocoseg")

log = get_logger(__name__)


class RayStartError(UserError):
    """Ray could not be started or joined."""


def quiet_ray_data() -> None:
    """Ray Data settings of this process (datasets carry them to where they execute)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.print_on_execution_start = verbose()
    ctx.enable_progress_bars = verbose()
    if not verbose():  # "Progress bars disabled", per-execution INFO lines
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def _filter_worker_output() -> None:
    """Replace Ray's printer of worker output on this driver with one that lets through only the
    progress bars (``tqdm_ray``) and cocoseg's warnings and errors. It uses Ray's (private) log
    dispatcher; if a Ray release changes it, the unfiltered default stays and nothing breaks."""
    try:
        from ray._private import worker as ray_worker
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        printer = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):
        return

    def keep(line: str) -> bool:
        return RAY_TQDM_MAGIC in line or any(level in line for level in _KEPT_WORKER_LEVELS)

    def handler(data: dict[str, Any]) -> None:
        lines = [line for line in data.get("lines", []) if keep(line)]
        if lines:
            printer({**data, "lines": lines}, ignore_prefix=False)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", handler)


def _quiet_driver_loggers() -> None:
    """MLflow's INFO lines (database set-up) and UserWarnings (signature hints) on the driver."""
    import warnings

    import mlflow  # noqa: F401  (its import configures its loggers: set the level after it)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")


def train_logging_config():
    """``RunConfig(logging_config=...)`` for Ray Train: its per-report INFO lines only when verbose."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING")


def _what_to_check(kwargs: dict[str, Any]) -> str:
    address = kwargs.get("address") or os.environ.get("RAY_ADDRESS") or ""
    if address and address != "local":
        return (f"check that the cluster at {address} is up (`ray status --address {address}`) and reachable "
                "from here, or unset RAY_ADDRESS to start a private local Ray")
    return ("check free memory and disk under /tmp/ray (`df -h /tmp`), the load (`uptime`), and another Ray "
            "of yours on this host (`ray status`; stop only your own); then rerun")


# What a private local Ray (``address="local"``: one node, this host, gone with this driver) does
# without: Ray Train's preemption watcher (an actor per training run polling for a drain of its
# nodes; the only node here is the driver's own). Set in the environment the Ray processes inherit,
# for their start only: this process's environment, and what it starts later, stay as they were.
# A value the user set wins.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@contextlib.contextmanager
def _inherited_env(values: dict[str, str]) -> Iterator[None]:
    """``values`` (those not already set) in ``os.environ`` for a ``with`` block."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        restore_env(dict.fromkeys(added))


def start_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` with the quiet settings, unless this process is already connected.

    A private local Ray (``address="local"``) starts with :data:`LOCAL_RAY_ENV`. A start-up that
    fails is retried once (after ``ray.shutdown()``); a second failure raises
    :class:`RayStartError` with one line: the reason and what to check.
    """
    import ray

    quiet_ray_data()
    if ray.is_initialized():
        return
    loud = verbose()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "1" if loud else "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if loud else "false")
    kwargs = {"logging_level": logging.INFO if loud else logging.ERROR, "log_to_driver": True, **kwargs}
    for attempt in (1, 2):
        try:
            with _inherited_env(LOCAL_RAY_ENV if kwargs.get("address") == "local" else {}):
                ray.init(**kwargs)
            if not loud:
                _filter_worker_output()
                _quiet_driver_loggers()
            return
        except Exception as exc:  # Ray raises plain Exception / ConnectionError / TimeoutError here
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            try:
                ray.shutdown()
            except Exception:  # nothing was started; shutdown of nothing may fail too
                pass
            if attempt == 1:
                log.warning("Ray did not start (%s); retrying once", reason)
                continue
            raise RayStartError(f"Ray did not start after 2 tries ({reason}); {_what_to_check(kwargs)}") from None


def release_placement_groups(group_ids: Iterable[str]) -> float:
    """Remove the placement groups ``group_ids`` (hex ids) that still hold resources; -> CPUs freed.

    Ray Train removes its workers' group when its controller ends gracefully; a controller killed
    with its owner (a Tune trial that ASHA stopped) leaves it to Train's ``PlacementGroupCleaner``,
    which asks the dashboard's state API and, on a Ray without a dashboard (every private local Ray
    here), never learns the controller died: the group keeps its CPUs until the driver exits, and
    later trials and validations wait for them forever.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    freed = 0.0
    for hex_id in dict.fromkeys(group_ids):
        group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(hex_id)))
        entry = placement_group_table(group)
        if entry.get("state") not in ("CREATED", "PENDING", "RESCHEDULING"):
            continue
        try:
            remove_placement_group(group)
        except ray.exceptions.RayError as exc:  # removed meanwhile, or the GCS is busy: the next sweep retries
            log.debug("placement group %s not removed: %s", hex_id, exc)
            continue
        freed += sum(float(b.get("CPU", 0.0)) for b in entry.get("bundles", {}).values())
    return freed


class StallWatch:
    """A job's loop that makes no progress for ``after_s`` seconds says so, and what it waits for.

    ``with StallWatch("evaluate", 120, waiting) as watch: for batch in ...: watch.tick()``: a daemon
    thread logs ``evaluate: no progress for 120 s; waiting for <waiting()>`` once per ``after_s``
    without a :meth:`tick` (the job goes on waiting: a slow start is not an error). ``waiting`` is
    called on that thread and may ask Ray for its free resources; if it fails, the line says so.
    """

    def __init__(self, job: str, after_s: float, waiting: Callable[[], str]):
        self.job, self.after_s, self.waiting = job, float(after_s), waiting
        self.last = time.monotonic()
        self.warnings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{job}-stall-watch", daemon=True)

    def tick(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.after_s / 4, 5.0)):
            idle = time.monotonic() - self.last
            if idle < self.after_s:
                continue
            try:
                what = self.waiting()
            except Exception as exc:  # Ray gone or busy: still say that nothing moves
                what = f"(the cluster did not answer: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
            log.warning("%s: no progress for %.0f s; waiting for %s", self.job, idle, what)
            self.warnings += 1
            self.last = time.monotonic()  # the next line after another after_s

    def __enter__(self) -> StallWatch:
        self.tick()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
