"""The trial side of ``pipelines.tune``: what runs in each Tune trial, and the driver's trial callback.

A trial's driver function (:func:`run_trial`, in Tune's trial actor) resolves its config
(:func:`trial_config`: the base config, the trial's draw, ``tune.epochs`` and the run name
``<search>-<trial id>``) and calls ``cocoseg.engine.trainer.train`` with a Ray Train ``UserCallback``
(:class:`EpochReport`, a ``TuneReportCallback``) that hands each epoch's report to Tune with
ASHA's clock and score added. The train job is the same code as a plain run: its MLflow run is
nested under the search's parent run, its checkpoints and resume are the train job's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from cocoseg import storage, tracking
from cocoseg.cluster import release_placement_groups
from cocoseg.config import JobConfig, from_dict, with_values
from cocoseg.engine.spot import MID_EPOCH_KEY
from cocoseg.engine.trainer import train
from cocoseg.engine.worker import FITNESS_KEY
from cocoseg.tune.report import EPOCHS_DONE, SCORE, search_score
from cocoseg.utils import get_logger

log = get_logger(__name__)

__all__ = ["EpochReport", "Progress", "release_trial", "run_trial", "trial_config", "trial_dirname",
           "trial_run_dir"]


class EpochReport(TuneReportCallback):
    """Tune's reporter from the Train controller, plus ASHA's clock (:data:`EPOCHS_DONE`)."""

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0]
        if MID_EPOCH_KEY in m:  # a just-in-time checkpoint inside an epoch: no epoch for ASHA
            return
        super().after_report(run_context, [{**m, EPOCHS_DONE: int(m["epoch"]) + 1, SCORE: search_score(m)}], checkpoint)


def trial_config(base: JobConfig, params: dict[str, Any], trial_id: str) -> JobConfig:
    """The train job of one trial: ``base`` with the trial's draw, ``tune.epochs`` and its own run."""
    # blocking validation: ASHA decides on each report's fitness, so it must come with its epoch
    return with_values(base, {**params, "train.epochs": base.tune.epochs or base.train.epochs,
                              "tracking.run_name": f"{base.tune.name}-{trial_id}", "validation.mode": "blocking"})


def run_trial(params: dict[str, Any], *, base: dict[str, Any], parent_run_id: str) -> None:
    """One trial's driver function (runs in Tune's trial actor): the train job, reported to Tune.

    A trial restarted after a lost driver first reports the epochs its run already journaled
    (Tune restarts it from nothing; ASHA must see them), then the train job resumes from the run's
    newest checkpoint, or, when the run had finished, is not started at all."""
    cfg = trial_config(from_dict(JobConfig, base), params, tune.get_context().get_trial_id())
    run_dir = storage.join(cfg.storage.root, "runs", cfg.tracking.run_name)
    for record in tracking.read_journal(tracking.journal_uri(run_dir)):
        m = {**record["metrics"], FITNESS_KEY: record["metrics"].get("val/mask_ap50_95", -1.0)}
        tune.report({**m, EPOCHS_DONE: record["step"] + 1, SCORE: search_score(m)})
    if tracking.read_run_record(run_dir).get("status") == "FINISHED":
        return
    train(cfg, parent_run_id=parent_run_id, callbacks=[EpochReport()])


def trial_dirname(trial) -> str:
    return trial.trial_id


def trial_run_dir(cfg: JobConfig, trial_id: str) -> str:
    """Where the train run of trial ``trial_id`` keeps its checkpoints and records (trial_config's run name)."""
    return storage.join(cfg.storage.root, "runs", f"{cfg.tune.name}-{trial_id}")


def release_trial(run_dir: str) -> float:
    """Free the Ray Train placement groups a trial's train run left behind; -> CPUs freed.

    A trial that ASHA stops is killed with its Train controller, whose workers' group then stays
    reserved on a Ray without a dashboard (see :func:`cocoseg.cluster.release_placement_groups`);
    each attempt's workers record their group under the run's ``workers/``."""
    groups = []
    for entry in storage.list_files(storage.join(run_dir, "workers")):
        if group := storage.read_json(entry.uri).get("placement_group"):
            groups.append(group)
    return release_placement_groups(groups)


class Progress(tune.Callback):
    """One console line per trial event; the start times feed the overhead figure in results; an
    ended trial's leftover placement groups are freed for the trials after it."""

    def __init__(self, epochs: int, run_dir: Callable[[str], str]):
        self.epochs, self.started, self.run_dir = epochs, {}, run_dir

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)

    def _release(self, trial) -> None:
        try:
            freed = release_trial(self.run_dir(trial.trial_id))
        except Exception as exc:  # a callback's error would stop the search; the last sweep retries
            log.warning("trial %s ended; its train workers' placement group was not checked (%s)", trial.trial_id,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return
        if freed:
            log.debug("trial %s ended: freed %g CPUs its train workers' placement group still held", trial.trial_id, freed)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        nan = float("nan")
        print(f"trial {trial.trial_id} epoch {result.get(EPOCHS_DONE, '?')}/{self.epochs}  mask AP50-95 "
              f"{result.get(FITNESS_KEY, nan):.4f}  loss {result.get('train/loss', nan):.3f}  {trial.config}", flush=True)
