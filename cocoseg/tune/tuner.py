"""Hyperparameter search on Ray Tune: every trial is the train job on one draw of ``tune.space``,
under ASHA, tracked as nested MLflow runs; a rerun resumes the search.

The job ``pipelines.tune`` runs :func:`run_search` (its docstring: the ``ray job submit`` line, what it reads,
writes and does on a rerun).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray import tune

from cocoseg import storage, tracking
from cocoseg.cluster import start_ray
from cocoseg.config import JobConfig, to_dict, with_values
from cocoseg.config_checks import prepare, ready
from cocoseg.engine.checks import check_cluster, check_feed, ray_init_kwargs, resolve_snapshot
from cocoseg.tune.report import (
    EPOCHS_DONE,
    SCORE,
    best_row,
    failure_summary,
    mark_trial_run,
    trial_rows,
    write_report,
)
from cocoseg.tune.search import open_search, train_best, write_best
from cocoseg.tune.space import (
    TRIAL_DRIVER_CPUS,
    check_concurrency,
    per_trial_cpus,
    tune_domains,
    validate_space,
)
from cocoseg.tune.trial import Progress, release_trial, run_trial, trial_dirname, trial_run_dir
from cocoseg.utils import get_logger, verbose

__all__ = ["TuneResult", "run_search"]

log = get_logger(__name__)


@dataclass
class TuneResult:
    parent_run_id: str
    tracking_uri: str
    tune_dir: str
    best_config: str  # URI of best.yaml
    best: dict[str, Any]  # the best trial's row of results.json
    rows: list[dict[str, Any]] = field(default_factory=list)
    trained: dict[str, Any] = field(default_factory=dict)  # tune.train_best: run, export and registry version


def _start_ray(cfg: JobConfig) -> None:
    """A private local Ray gets logical CPUs for the concurrent trials (as pipelines.train does for
    one run); a cluster in RAY_ADDRESS is taken as it is and checked."""
    kwargs = ray_init_kwargs(cfg.scaling, cfg.data, cfg.validation)
    if "num_cpus" in kwargs:
        need = cfg.tune.max_concurrent_trials * per_trial_cpus(cfg) + 1
        kwargs["num_cpus"] = max(kwargs["num_cpus"], math.ceil(need))
    start_ray(**kwargs)


def _tuner(cfg: JobConfig, flat: dict, base: dict, parent: str, progress: Progress) -> tune.Tuner:
    """A new Tuner, or the restored one when the search state exists (a rerun resumes)."""
    t = cfg.tune
    root = storage.join(cfg.storage.root if storage.is_s3(cfg.storage.root) else os.path.abspath(cfg.storage.root), "tune")
    # A trial's placement group holds its driver function and its input actors (created by the
    # driver, so Tune's group captures them); its train workers get Train's own group.
    bundles = [{"CPU": TRIAL_DRIVER_CPUS}] + [{"CPU": cfg.data.cpus_per_actor}] * cfg.data.actors
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, parent_run_id=parent),
                                    tune.PlacementGroupFactory(bundles))
    path = storage.join(root, t.name)
    if tune.Tuner.can_restore(path):
        log.warning("resuming the search in %s (finished trials are kept)", path)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    scheduler = tune.schedulers.ASHAScheduler(time_attr=EPOCHS_DONE, max_t=t.epochs or cfg.train.epochs,
                                              grace_period=t.grace_period, reduction_factor=t.reduction_factor,
                                              stop_last_trials=False)  # a trial's last epoch ends by itself
    return tune.Tuner(trainable, param_space=tune_domains(flat), tune_config=tune.TuneConfig(
        metric=SCORE, mode="max", scheduler=scheduler, num_samples=t.num_trials, trial_dirname_creator=trial_dirname,
        search_alg=tune.search.BasicVariantGenerator(max_concurrent=t.max_concurrent_trials, random_state=t.seed)),
        run_config=tune.RunConfig(name=t.name, storage_path=root, callbacks=[progress], verbose=2 if verbose() else 0,
                                  failure_config=tune.FailureConfig(max_failures=0)))


def _report_failures(rows: list[dict[str, Any]], tracking_uri: str, parent: str) -> None:
    """When no trial succeeded: one line per distinct failure, printed and set on the parent run
    (tag ``tune.failures``; ``tune/failures.txt`` is logged by write_report)."""
    if any(r["status"] != "error" for r in rows):
        return
    lines = failure_summary(rows)
    for line in lines:
        print(f"tune: {line}", flush=True)
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_tag(parent, "tune.failures", "\n".join(lines)[:4900])


def run_search(cfg: JobConfig) -> TuneResult:
    """Search per ``cfg.tune``; returns where the results and the best config are."""
    cfg = prepare("tune", cfg)  # cross-key rules, absolute paths (each trial runs in its own folder)
    flat = validate_space(cfg)  # bad keys and distributions: one line, before anything starts
    manifest = resolve_snapshot(cfg.train, cfg.storage, cfg.model)  # once, on the driver, not in every trial
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    tracking.preflight(uri)
    cfg = with_values(cfg, {"train.snapshot": manifest.snapshot_uri, "tracking.tracking_uri": uri})
    ready("tune", cfg, {"trials": cfg.tune.num_trials, "snapshot": cfg.train.snapshot})
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose() else "0")  # else Tune's banner ignores verbose=0
    _start_ray(cfg)
    check_concurrency(cfg, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    if warning := check_feed(cfg.train, cfg.model, cfg.scaling, cfg.data,
                             check_cluster(cfg.scaling, cfg.data, cfg.validation)):
        log.warning("%s", warning)
    tune_dir, parent = open_search(cfg, flat, uri)
    epochs = cfg.tune.epochs or cfg.train.epochs
    run_dir = functools.partial(trial_run_dir, cfg)
    progress = Progress(epochs, run_dir)
    base = to_dict(replace(cfg, tracking=replace(cfg.tracking, run_name="", parent_run_id="")))
    try:
        results = _tuner(cfg, flat, base, parent, progress).fit()
        rows = trial_rows(results, list(flat), run_dir, epochs, progress.started)
        for row in rows:  # a last sweep: what a trial left while its end was being reported
            release_trial(run_dir(row["trial_id"]))
        for row in rows:
            mark_trial_run(row, list(flat), cfg.tune.name, uri)
        write_report(rows, flat, tune_dir, uri, parent)
        _report_failures(rows, uri, parent)
        best = best_row(rows)
        best_uri, best_cfg = write_best(cfg, best, flat, tune_dir, uri, parent)
        out = TuneResult(parent_run_id=parent, tracking_uri=uri, tune_dir=tune_dir, best_config=best_uri,
                         best=dict(best), rows=rows)
        if cfg.tune.train_best:
            out.trained = train_best(best_cfg, tune_dir, parent)
    except Exception:
        tracking.finish_run(uri, parent, "FAILED")  # a rerun of the same command sets it running again
        raise
    tracking.finish_run(uri, parent)
    return out
