"""The config's sections: one frozen dataclass per concern, composed into :class:`JobConfig`.

Every field has a default, so an empty YAML file is a valid (embedded-defaults) configuration;
each ``__post_init__`` checks its section's value ranges and raises :class:`ConfigError` naming
the key. Loading, overrides and resolution live in :mod:`cocoseg.config.load`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConfigError",
    "DataStageConfig",
    "EvaluateConfig",
    "ExportConfig",
    "IngestConfig",
    "JobConfig",
    "ModelConfig",
    "RegistryConfig",
    "RetrainConfig",
    "ScalingConfig",
    "StorageConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "ValidationConfig",
]


class ConfigError(ValueError):
    """A configuration problem, with a message that says how to fix it."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class StorageConfig:
    """Where snapshots, runs and artifacts live: a local folder or an ``s3://`` URI."""

    root: str = "./.cocoseg"


@dataclass(frozen=True)
class IngestConfig:
    """COCO-Seg (COCO JSON or the seed's YOLO layout) -> immutable Parquet snapshot."""

    source: str = ""  # folder or s3:// URI of the source dataset (or a dataset YAML)
    dest: str = ""  # snapshot root; empty means <storage.root>
    layout: str = "auto"  # "coco", "yolo" or "auto"
    splits: tuple[str, ...] = ()  # empty: every split the source has
    shard_bytes: int = 256 * 1024 * 1024
    box_tolerance_px: float = 2.0
    read_parallelism: int = -1  # shard tasks running at once; -1: as many as the cluster CPUs allow
    decode_check: str = "header"  # "header" (parse + JPEG end marker), "draft" (JPEG at 1/8 scale) or "full" decoding

    def __post_init__(self) -> None:
        _check_choice("ingest.layout", self.layout, ("auto", "coco", "yolo"))
        _check_choice("ingest.decode_check", self.decode_check, ("header", "draft", "full"))
        _check(self.shard_bytes >= 1024, "ingest.shard_bytes", "must be at least 1024 bytes")
        _check(self.box_tolerance_px >= 0, "ingest.box_tolerance_px", "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """Which network: the YOLOv8-seg variant and its input size."""

    variant: str = "n"
    num_classes: int = 80
    imgsz: int = 640
    weights: str = ""  # initial weights: a cocoseg checkpoint dir or an imported reference .pt

    def __post_init__(self) -> None:
        _check_choice("model.variant", self.variant, ("n", "s", "m", "l", "x"))
        _check(self.num_classes >= 1, "model.num_classes", "must be >= 1")
        _check(self.imgsz >= 32 and self.imgsz % 32 == 0, "model.imgsz",
               f"must be a positive multiple of 32, got {self.imgsz}")


@dataclass(frozen=True)
class TrainConfig:
    """The YOLOv8 recipe (spec section 9): what one run trains, whatever the cluster."""

    snapshot: str = ""  # snapshot URI (…/snapshots/<id>) or "latest" under storage.root
    epochs: int = 100
    batch_size: int = 16  # per worker
    nominal_batch: int = 64
    optimizer: str = "auto"  # auto: AdamW for short runs, SGD beyond 10k iterations (spec 9.2; ignores lr0/momentum/warmup_bias_lr)
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_min_steps: int = 100  # warm-up lasts max(warmup_epochs x batches, this) micro-batches
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    cos_lr: bool = False
    close_mosaic: int = 10
    # ground-truth masks at 1/mask_ratio of the input. 4 (YOLOv8): the mask loss's target is whether
    # a prototype cell's centre is inside; 1 or 2: the fraction of the cell the instance covers (a soft
    # target; measured: masks 3 % worse against boxes, docs/quality.md)
    mask_ratio: int = 4
    augment: str = "yolov8"  # named preset in cocoseg.data.augment
    amp: str = "auto"  # "auto" (bf16 on GPU), "bf16", "fp16" or "off"
    seed: int = 0
    val_every: int = 1
    grad_clip: float = 10.0  # max total gradient norm per optimiser step
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0  # EMA ramp length in optimiser steps (spec 9.4)
    val_batch_size: int = 0  # 0: twice batch_size
    checkpoints_to_keep: int = 2  # full Ray checkpoints kept: the best N by val mask AP50-95, plus the latest
    preview_images: int = 8  # val images in the per-epoch preview (ground truth | prediction); 0: none
    # early stopping: end the run once `patience` epochs pass without a better validated mask AP50-95
    # (the reference's default, 100); 0: off (engine/stopping.py)
    patience: int = 100
    # wall-clock budget in hours: the epochs that fit are re-planned every epoch (at most `epochs`);
    # 0 or null: off (engine/budget.py, docs/reliability.md)
    time_budget_h: float | None = None

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.close_mosaic >= 0, "train.close_mosaic", "must be >= 0")
        _check(self.mask_ratio in (1, 2, 4), "train.mask_ratio",
               f"must be 1, 2 or 4 (the prototype grid is 1/4 of the input), got {self.mask_ratio}")
        _check(self.warmup_min_steps >= 0, "train.warmup_min_steps", "must be >= 0")
        _check(self.checkpoints_to_keep >= 1, "train.checkpoints_to_keep", "must be >= 1")
        _check(self.grad_clip > 0, "train.grad_clip", "must be > 0")
        _check(self.val_every >= 1, "train.val_every", "must be >= 1 (validate every N epochs; the last is always validated)")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.patience >= 0, "train.patience", "must be >= 0 (epochs without improvement; 0: off)")
        _check_choice("train.optimizer", self.optimizer, ("auto", "SGD", "AdamW", "Adam"))
        _check_choice("train.amp", self.amp, ("auto", "bf16", "fp16", "off"))


@dataclass(frozen=True)
class ValidationConfig:
    """Where a training run's validation runs (``train.val_every`` says which epochs)."""

    # async: each due epoch is validated by a Ray task of its own while training goes on
    # (engine/validation.py); blocking: rank 0 validates in-process between epochs (every rank waits)
    mode: str = "async"
    # async: 1 (on CPUs): the validation task detects and scores in its own process, on its CPUs;
    # more, or use_gpu: DetectBatch actors of a Ray Data pool per validation, the task scores
    actors: int = 1
    cpus_per_actor: float = 1.0  # ... CPUs each (and of the validation task)
    use_gpu: bool = False  # ... one GPU per actor (spare GPUs beside the train workers)
    concurrency: int = 1  # async validations running at once (more wait in a queue)

    @property
    def in_task(self) -> bool:
        """One CPU actor's work: the task does it itself (no actor process to start, no read tasks)."""
        return self.actors == 1 and not self.use_gpu

    def __post_init__(self) -> None:
        _check_choice("validation.mode", self.mode, ("async", "blocking"))
        _check(self.actors >= 1 and self.concurrency >= 1, "validation.actors", "actors and concurrency must be >= 1")
        _check(self.cpus_per_actor > 0, "validation.cpus_per_actor", "must be > 0")


@dataclass(frozen=True)
class ScalingConfig:
    """How a training run spreads over the Ray cluster: the worker group and its fault tolerance."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # torch intra-op threads; 0: cpus_per_worker rounded up
    placement_strategy: str = "PACK"
    max_failures: int = 2
    async_upload: bool = True  # checkpoint upload in Ray's background thread (ASYNC); false: the step waits
    # Fewest workers the run may go on with after losing some (a node gone): 0 means num_workers
    # (a fixed group). Below num_workers, Ray Train runs elastic (ScalingConfig num_workers=(min, max)).
    min_workers: int = 0
    # Spot GPUs and stuck ranks (docs/reliability.md "Spot GPUs"): poll Ray Train's preemption
    # notice every N optimiser steps (a barrier across workers; 0: off) and write a just-in-time
    # checkpoint on one; node reclaims retried apart from max_failures (-1: always).
    preemption_poll_steps: int = 10
    max_preemption_failures: int = -1
    # A rank without progress for this long fails the group (stacks dumped; the collective timeout
    # follows it). 0: automatic (50 median steps, 120-600 s); -1: no watchdog.
    hang_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "scaling.num_workers", "must be >= 1")
        _check(self.preemption_poll_steps >= 0, "scaling.preemption_poll_steps", "must be >= 0 (0: no polling)")
        _check(self.max_preemption_failures >= -1, "scaling.max_preemption_failures",
               "must be >= 0 (or -1 for unlimited)")
        _check(self.hang_timeout_s == -1 or self.hang_timeout_s >= 0, "scaling.hang_timeout_s",
               "must be seconds > 0, 0 (automatic) or -1 (no watchdog)")
        _check(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _check(self.max_failures >= -1, "scaling.max_failures", "must be >= 0 (or -1 for unlimited)")
        _check(0 <= self.min_workers <= self.num_workers, "scaling.min_workers",
               f"must be between 1 and scaling.num_workers={self.num_workers} (0: the same as num_workers)")
        _check_choice("scaling.placement_strategy", self.placement_strategy,
                      ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))


@dataclass(frozen=True)
class DataStageConfig:
    """The training input: the actors that decode and augment for all workers, and how much of the
    snapshot a run reads."""

    actors: int = 2  # input actors decoding + augmenting for all workers, kept all run (CPU, any node)
    cpus_per_actor: float = 1.0
    batch_rows: int = 16  # rows per input-actor call; mosaic partners come from the same call's rows
    # a call's rows are this many runs of consecutive rows, from anywhere in the worker's part and
    # different every epoch; 1: one run (fewest row-group reads, but the same batches every epoch)
    chunk_runs: int = 4
    max_train_images: int = 0  # 0: the whole train split; else the first N (smoke runs, benchmarks)
    max_val_images: int = 0
    # LVIS repeat-factor sampling: an image is seen max(1, sqrt(t / f_c)) times per epoch (on average; the
    # max over its classes c, f_c the fraction of training images holding c); 0: off. LVIS uses 0.001.
    repeat_factor_threshold: float = 0.0

    def __post_init__(self) -> None:
        _check(self.actors >= 1, "data.actors", "must be >= 1")
        _check(self.cpus_per_actor > 0, "data.cpus_per_actor", "must be > 0")
        _check(self.batch_rows >= 1, "data.batch_rows", "must be >= 1")
        _check(self.chunk_runs >= 1, "data.chunk_runs", "must be >= 1")
        _check(self.max_train_images >= 0 and self.max_val_images >= 0, "data.max_train_images",
               "max_train_images and max_val_images must be >= 0 (0: the whole split)")
        _check(0.0 <= self.repeat_factor_threshold <= 1.0, "data.repeat_factor_threshold",
               f"must be in [0, 1] (a fraction of the training images; 0: off), got {self.repeat_factor_threshold}")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking. An empty URI means $MLFLOW_TRACKING_URI, else SQLite under the root."""

    tracking_uri: str = ""
    experiment: str = "cocoseg"
    run_name: str = ""  # also names the run folder <storage.root>/runs/<run_name>; empty: generated
    parent_run_id: str = ""  # nest the training run under this run (pipelines set it)
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    # MLflow down when a run starts: false = fail at once with one line; true = train on the
    # journal (tracking/) and create the MLflow run at the end or with `cocoseg sync-mlflow RUN_DIR`
    offline_ok: bool = False


@dataclass(frozen=True)
class ExportConfig:
    """ONNX / TensorRT export of trained weights (cocoseg.export; docs/export-registry.md)."""

    formats: tuple[str, ...] = ("onnx",)  # add "engine" for a TensorRT plan (GPU hosts only)
    exporter: str = "torchscript"  # or "dynamo" (needs onnxscript; no in-graph NMS)
    opset: int = 18
    dynamic_batch: bool = True
    dynamic_hw: bool = False  # H x W dynamic in multiples of 32
    nms: bool = False  # ONNX NonMaxSuppression in the graph (extra output `keep`)
    nms_iou: float = 0.7
    nms_conf: float = 0.25
    simplify: bool = True  # onnxslim, kept only when the slimmed graph passes parity too
    imgsz: int = 0  # 0: the model card's (the size the weights were trained at)
    min_batch: int = 1  # TensorRT optimisation profile (min / opt / max batch)
    opt_batch: int = 8
    max_batch: int = 16
    max_hw: int = 1280  # TensorRT profile max H = W when dynamic_hw
    fp16: bool = True  # BuilderFlag.FP16 on TensorRT 10.x; 11.x is strongly typed (FP32 ONNX)
    workspace_gib: float = 4.0
    timing_cache_dir: str = ""  # empty: <storage.root>/cache/tensorrt
    bench: bool = True
    bench_warmup: int = 3
    bench_runs: int = 10
    calibration_images: int = 64  # onnx-int8: train-split images drawn (seeded) to calibrate the static quantization
    calibration_seed: int = 0
    int8_exclude: tuple[str, ...] = ("decode",)  # onnx-int8: kept in float: node-name substrings or presets
    # "decode" (the output decode, whose concat mixes pixels and scores) / "head-final" (docs/promotion.md)

    def __post_init__(self) -> None:
        _check(self.calibration_images >= 1, "export.calibration_images", "must be >= 1")
        for fmt in self.formats:
            _check_choice("export.formats[]", fmt, ("onnx", "onnx-int8", "engine"))
        _check("onnx" in self.formats, "export.formats", "must include 'onnx' (the engine is built from it)")
        _check_choice("export.exporter", self.exporter, ("torchscript", "dynamo"))
        _check(self.opset >= 18, "export.opset", "must be >= 18 (the torch 2.13 exporter rejects 17)")
        _check(self.imgsz == 0 or (self.imgsz >= 32 and self.imgsz % 32 == 0), "export.imgsz",
               f"must be 0 (the model card's) or a positive multiple of 32, got {self.imgsz}")
        _check(1 <= self.min_batch <= self.opt_batch <= self.max_batch, "export.min_batch",
               "the profile needs 1 <= min_batch <= opt_batch <= max_batch")
        _check(0 < self.nms_iou <= 1 and 0 <= self.nms_conf < 1, "export.nms_iou",
               "nms_iou must be in (0, 1] and nms_conf in [0, 1)")
        _check(self.bench_runs >= 1 and self.bench_warmup >= 0, "export.bench_runs",
               "bench_runs must be >= 1 and bench_warmup >= 0")


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow Model Registry and the champion/challenger promotion gate (cocoseg.registry)."""

    model_name: str = "cocoseg-yolov8-seg"
    gate_metric: str = "val/mask_ap50_95"  # key in the export's metrics.json (the trainer's name; nested keys joined by ".")
    promotion_margin: float = 0.0  # the challenger needs gate_metric >= champion's + margin
    same_snapshot: bool = True  # refuse to compare metrics measured on different val snapshots
    max_export_drop: float = 0.005  # served artifact's mask/box AP50-95 may trail the eager model's by this much
    max_class_drop: float = 0.05  # no class present in the split may lose more AP50-95 than this vs the champion
    bootstrap_resamples: int = 1000  # paired per-image bootstrap of the AP difference (docs/promotion.md)
    bootstrap_seed: int = 0
    bootstrap_confidence: float = 0.95  # two-sided interval; promotion needs its lower bound > promotion_margin

    def __post_init__(self) -> None:
        _check(bool(self.model_name.strip()), "registry.model_name", "must not be empty")
        _check(self.promotion_margin >= 0, "registry.promotion_margin", "must be >= 0")
        _check(self.max_export_drop >= 0 and self.max_class_drop >= 0, "registry.max_export_drop",
               "max_export_drop and max_class_drop must be >= 0")
        _check(self.bootstrap_resamples >= 100, "registry.bootstrap_resamples", "must be >= 100")
        _check(0.5 <= self.bootstrap_confidence < 1, "registry.bootstrap_confidence", "must be in [0.5, 1)")


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate job (pipelines/evaluate.py) and batch inference (pipelines/infer.py)."""

    split: str = "val"
    imgsz: int = 0  # 0: the model card's
    conf: float = 0.001  # the evaluation protocol (spec 11); infer uses predict_conf
    iou: float = 0.7
    max_det: int = 300
    predict_conf: float = 0.25  # pipelines.infer: predict mode (one label per box)
    batch_size: int = 16  # rows per actor call
    actors: int = 0  # 0: one per cluster CPU (or GPU with use_gpu) / cpus_per_actor, less 1 CPU for the reads
    cpus_per_actor: float = 1.0
    use_gpu: bool = False
    threads_per_actor: int = 0  # torch intra-op threads in each actor; 0: its CPUs (local Ray: all cores)
    stall_warn_s: float = 120.0  # no batch for this long: one line saying what the job waits for (again each period)
    chunk_images: int = 256  # pipelines.infer: images per output Parquet file (the unit of resume)
    scorer: str = "faster-coco-eval"  # COCO AP: faster-coco-eval or pycocotools (same AP to 1e-4; docs/evaluation.md)

    def __post_init__(self) -> None:
        _check(self.imgsz >= 0 and self.imgsz % 32 == 0, "evaluate.imgsz", "must be 0 or a multiple of 32")
        _check(self.chunk_images >= 1, "evaluate.chunk_images", "must be >= 1 (images per output file)")
        _check(0 <= self.conf < 1 and 0 <= self.predict_conf < 1 and 0 < self.iou <= 1, "evaluate.conf",
               "conf and predict_conf must be in [0, 1), iou in (0, 1]")
        _check(self.max_det >= 1 and self.batch_size >= 1 and self.actors >= 0, "evaluate.batch_size",
               "batch_size and max_det must be >= 1, actors >= 0")
        _check(self.cpus_per_actor > 0 and self.threads_per_actor >= 0, "evaluate.cpus_per_actor",
               "must be > 0 (threads_per_actor >= 0)")
        _check_choice("evaluate.scorer", self.scorer, ("faster-coco-eval", "pycocotools"))


@dataclass(frozen=True)
class RetrainConfig:
    """Scheduled retraining (pipelines/retrain.py): when to train and how to start."""

    force: bool = False  # train even when the source is unchanged and the champion saw this snapshot
    warm_start: bool = True  # initialise from the registry's champion (when it has the same variant/classes)


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search (pipelines/tune.py): trials of the train job under ASHA.

    ``space`` maps dotted config keys to one distribution each, e.g.
    ``{"train.lr0": {"loguniform": [1e-4, 1e-2]}, "train.optimizer": {"choice": ["SGD", "AdamW"]}}``
    (``uniform`` / ``loguniform`` / ``randint`` take ``[low, high]``, randint's high exclusive);
    the job validates it against this schema before any trial starts.
    """

    name: str = "search"  # <storage.root>/tune/<name>: the search state (rerun = resume) and its results
    space: dict[str, Any] = field(default_factory=dict)
    num_trials: int = 8
    max_concurrent_trials: int = 2
    epochs: int = 0  # epochs per trial (ASHA's max_t); 0: train.epochs
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung
    seed: int = 0  # the sampler's seed: the same seed draws the same trials
    train_best: bool = False  # then train the best config to train.epochs, export and register it (challenger)

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()) and "/" not in self.name, "tune.name", "must be a non-empty folder name")
        _check(self.num_trials >= 1, "tune.num_trials", "must be >= 1")
        _check(self.max_concurrent_trials >= 1, "tune.max_concurrent_trials", "must be >= 1")
        _check(self.epochs >= 0, "tune.epochs", "must be >= 0 (0: train.epochs)")
        _check(self.grace_period >= 1, "tune.grace_period", "must be >= 1 epoch")
        _check(self.reduction_factor > 1, "tune.reduction_factor", "must be > 1 (2 keeps the better half at each rung)")


@dataclass(frozen=True)
class JobConfig:
    """Everything a pipeline job reads. Sections not used by a job are simply ignored."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    data: DataStageConfig = field(default_factory=DataStageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
