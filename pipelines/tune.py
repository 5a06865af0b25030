"""Hyperparameter search on Ray Tune: every trial is the train job (pipelines.train) on one draw of ``tune.space``.

    ray job submit --address http://<head>:8265 --working-dir . -- python -m pipelines.tune \\
        --config pipelines/configs/tune.yaml train.snapshot=s3://bucket/cocoseg/snapshots/<id> \\
        storage.root=s3://bucket/cocoseg tune.name=lr-sweep tune.num_trials=16 tune.max_concurrent_trials=4

(or ``cocoseg tune ...``). Each trial's driver function builds and fits the same ``TorchTrainer``
as ``pipelines.train.run`` (``tune.epochs`` epochs, the run ``<storage.root>/runs/<name>-<trial
id>``), reporting every epoch to Tune through ``TuneReportCallback``; ASHA stops the weaker trials
on val mask AP50-95, ties broken by the lower train loss (``tune.grace_period``,
``tune.reduction_factor``). The space, the keys it names and ``tune.max_concurrent_trials``
against the cluster are checked before any trial starts.

Reads the snapshot (``train.snapshot``). Writes ``<storage.root>/tune/<name>/``: Tune's search
state, ``search.json``, ``results.{csv,json}``, ``metric_vs_params.png`` and ``best.yaml`` (the
best trial's config at ``train.epochs``, ready for ``pipelines.train``); one run folder per trial
under ``<storage.root>/runs/``; in MLflow a parent run with one nested run per trial.
``tune.train_best=true`` then trains, exports and registers ``best.yaml`` (challenger).

Rerun the same command: a resume (``Tuner.restore``). Finished trials are not trained again: a
trial restarted after a lost driver reports the epochs its run journaled, then its run resumes
from its newest checkpoint (or, already finished, is not started).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray import tune

from cocoseg import storage, tracking
from cocoseg.config import ConfigError, JobConfig, load_config, to_dict, with_values
from cocoseg.utils import UserError, get_logger, redact, set_verbose, verbose
from pipelines import config_path
from pipelines._ray import start_ray
from pipelines._train_checks import check_cluster, ray_init_kwargs, resolve_snapshot
from pipelines._tune_report import (
    EPOCHS_DONE,
    SCORE,
    best_row,
    mark_trial_run,
    trial_rows,
    write_report,
)
from pipelines._tune_search import open_search, train_best, write_best
from pipelines._tune_space import (
    TRIAL_DRIVER_CPUS,
    check_concurrency,
    per_trial_cpus,
    tune_domains,
    validate_space,
)
from pipelines._tune_trial import Progress, run_trial, trial_dirname

__all__ = ["TuneResult", "main", "run"]

log = get_logger("pipelines.tune")


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
    kwargs = ray_init_kwargs(cfg)
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
    bundles = [{"CPU": TRIAL_DRIVER_CPUS}] + [{"CPU": cfg.train.data_cpus_per_actor}] * cfg.train.data_actors
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


def run(cfg: JobConfig) -> TuneResult:
    """Search per ``cfg.tune``; returns where the results and the best config are."""
    flat = validate_space(cfg)  # bad keys and distributions: one line, before anything starts
    manifest = resolve_snapshot(cfg)
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.storage.root)
    tracking.preflight(uri)
    cfg = with_values(cfg, {"train.snapshot": manifest["snapshot_uri"], "tracking.tracking_uri": uri})
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose() else "0")  # else Tune's banner ignores verbose=0
    _start_ray(cfg)
    check_concurrency(cfg, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    check_cluster(cfg)
    tune_dir, parent = open_search(cfg, flat, uri)
    epochs = cfg.tune.epochs or cfg.train.epochs
    progress = Progress(epochs)
    base = to_dict(replace(cfg, tracking=replace(cfg.tracking, run_name="", parent_run_id="")))
    try:
        results = _tuner(cfg, flat, base, parent, progress).fit()
        rows = trial_rows(results, list(flat), lambda tid: storage.join(cfg.storage.root, "runs", f"{cfg.tune.name}-{tid}"),
                          epochs, progress.started)
        for row in rows:
            mark_trial_run(row, list(flat), cfg.tune.name, uri)
        write_report(rows, flat, tune_dir, uri, parent)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="job config YAML (e.g. pipelines/configs/tune.yaml)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output too")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tune.num_trials=8")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)
    try:
        result = run(load_config(config_path(args.config), args.overrides))
    except (ConfigError, UserError) as exc:
        print(f"tune: error: {exc}", file=sys.stderr)
        return 2
    print(redact(f"best trial {result.best['trial_id']}: mask AP50-95 {result.best['best_mask_ap50_95']:.4f}; "
                 f"config {result.best_config}; MLflow parent run {result.parent_run_id} at {result.tracking_uri}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
