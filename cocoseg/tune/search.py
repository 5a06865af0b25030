"""A search's own records (``pipelines.tune``): its parent MLflow run, its best config, training it.

``<storage.root>/tune/<name>/search.json`` holds the parent run's id and the settings that define
the search (space, trial count, seed, ASHA, the base config). A rerun with the same settings reuses
the parent run and resumes; a rerun with other settings under the same name is refused (one line
naming what changed), since Tune would resume the old search and ignore the new one.
"""

from __future__ import annotations

import os
import time
from typing import Any

import yaml

from cocoseg import storage, tracking
from cocoseg.config import ConfigError, JobConfig, to_dict, with_values
from cocoseg.utils import get_logger, redact

__all__ = ["SEARCH_RECORD", "open_search", "train_best", "write_best"]

SEARCH_RECORD = "search.json"
BEST_CONFIG = "best.yaml"
BEST_TRAINED = "best_trained.json"

log = get_logger(__name__)


def _root(cfg: JobConfig) -> str:
    return cfg.storage.root if storage.is_s3(cfg.storage.root) else os.path.abspath(cfg.storage.root)


def _identity(cfg: JobConfig, flat: dict[str, Any]) -> dict[str, Any]:
    """What makes a search the same search (not: concurrency, train_best, where MLflow lives)."""
    data = to_dict(cfg)
    t = data.pop("tune")
    data["tracking"] = {k: v for k, v in data["tracking"].items() if k in ("experiment",)}
    return redact({"space": flat, "tune": {k: t[k] for k in ("num_trials", "epochs", "grace_period", "reduction_factor",
                                                            "seed")}, "config": data})


def open_search(cfg: JobConfig, flat: dict[str, Any], tracking_uri: str) -> tuple[str, str]:
    """``(tune_dir, parent MLflow run id)``: the recorded search's, else a new parent run."""
    tune_dir = storage.join(_root(cfg), "tune", cfg.tune.name)
    record_uri = storage.join(tune_dir, SEARCH_RECORD)
    identity = _identity(cfg, flat)
    if storage.exists(record_uri):
        record = storage.read_json(record_uri)
        old, new = tracking.flatten_params(record["identity"]), tracking.flatten_params(identity)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed and not _trained_any(cfg):
            log.warning("tune.name=%s: the search in %s trained no epoch of any trial; it is replaced by this one "
                        "(%s differ)", cfg.tune.name, tune_dir, ", ".join(changed[:4]))
            storage.delete(tune_dir, recursive=True)
            return _new_search(cfg, tune_dir, identity, flat, tracking_uri)
        if changed:
            raise ConfigError(f"tune.name={cfg.tune.name}: {tune_dir} holds a search with other settings "
                              f"({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''} differ); rerun with "
                              "the same config to resume it, or set a new tune.name")
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri).update_run(record["parent_run_id"], status="RUNNING")  # ended FAILED last time?
        return tune_dir, record["parent_run_id"]
    return _new_search(cfg, tune_dir, identity, flat, tracking_uri)


def _trained_any(cfg: JobConfig) -> bool:
    """Whether a trial of the search ``tune.name`` journaled an epoch (its run folders,
    ``<storage.root>/runs/<name>-<trial id>``): such a search is not replaced by another."""
    runs = storage.join(_root(cfg), "runs")
    try:
        entries = storage.list_files(runs, suffix=tracking.JOURNAL_NAME)
    except FileNotFoundError:
        return False
    prefix = storage.join(runs, f"{cfg.tune.name}-")
    return any(e.uri.startswith(prefix) and tracking.read_journal(e.uri) for e in entries)


def _new_search(cfg: JobConfig, tune_dir: str, identity: dict[str, Any], flat: dict[str, Any],
                tracking_uri: str) -> tuple[str, str]:
    record_uri = storage.join(tune_dir, SEARCH_RECORD)
    artifacts = storage.join(_root(cfg), "mlartifacts") if tracking_uri.startswith("sqlite:") else ""
    parent = tracking.create_run(tracking_uri=tracking_uri, experiment=cfg.tracking.experiment,
                                 run_name=f"tune-{cfg.tune.name}", params={"tune": identity["tune"], "space": flat},
                                 tags={"tune.search": cfg.tune.name, "tune.dir": tune_dir, "cocoseg.job": "tune"},
                                 artifact_location=artifacts)
    storage.write_json(record_uri, {"parent_run_id": parent, "tracking_uri": tracking_uri, "identity": identity,
                                    "created": time.time()})
    return tune_dir, parent


def write_best(cfg: JobConfig, best: dict[str, Any], flat: dict[str, Any], tune_dir: str, tracking_uri: str,
               parent: str) -> tuple[str, JobConfig]:
    """``best.yaml``: the best trial's resolved config at ``train.epochs`` (a train job's config);
    printed, logged on the parent run. Returns its URI and the config."""
    best_cfg = with_values(cfg, {**{k: best[k] for k in flat}, "tracking.run_name": "",
                                 "tracking.parent_run_id": ""})
    data = to_dict(best_cfg)
    data.pop("tune")
    uri = storage.join(tune_dir, BEST_CONFIG)
    text = (f"# The best trial ({best['trial_id']}) of search {cfg.tune.name!r}: val mask AP50-95 "
            f"{best['best_mask_ap50_95']:.4f} in {best['epochs_done']} epoch(s); train it to train.epochs with\n"
            f"#   python -m pipelines.train --config {uri if not storage.is_s3(uri) else BEST_CONFIG + '  (a local copy)'}\n"
            + yaml.safe_dump(redact(data), sort_keys=False))
    storage.write_text(uri, text)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with storage.local_copy(uri) as local:
        client.log_artifact(parent, str(local), artifact_path="tune")
    client.set_tag(parent, "tune.best_trial", best["trial_id"])
    client.set_tag(parent, "tune.best_run_id", best.get("mlflow_run_id", ""))
    client.log_metric(parent, "best/val_mask_ap50_95", float(best["best_mask_ap50_95"]))
    print(f"best config ({uri}):\n{text}", flush=True)
    return uri, best_cfg


def train_best(best_cfg: JobConfig, tune_dir: str, parent: str) -> dict[str, Any]:
    """``tune.train_best``: train the best config to ``train.epochs`` (nested under the search),
    export it and register it (challenger; the gate decides champion) as cocoseg.retrain does.
    Done once per search: a rerun reports the recorded outcome."""
    from cocoseg.engine.trainer import train
    from cocoseg.export.job import export_checkpoint
    from cocoseg.registry.register import register

    done_uri = storage.join(tune_dir, BEST_TRAINED)
    if storage.exists(done_uri):
        return storage.read_json(done_uri)
    cfg = with_values(best_cfg, {"tracking.run_name": f"{best_cfg.tune.name}-best"})
    trained = train(cfg, parent_run_id=parent)
    export_dir = storage.join(cfg.storage.root, "exports", cfg.tracking.run_name)
    export_checkpoint(cfg, trained.best_weights, export_dir, train_run_id=trained.mlflow_run_id)
    reg = register(cfg, export_dir)
    out = {"mlflow_run_id": trained.mlflow_run_id, "run_dir": trained.run_dir, "export_dir": export_dir,
           "model": reg.name, "version": str(reg.version), "decision": reg.decision.decision,
           "metrics": trained.metrics}
    storage.write_json(done_uri, out)
    print(f"tune: the best config trained ({trained.run_dir}) and registered: {reg.name} v{reg.version} "
          f"{reg.decision.decision}", flush=True)
    return out
