"""Config -> objects: the one place that translates :class:`~cocoseg.config.JobConfig` for training.

One small ``build_*`` per object; everything else in the engine takes explicit keyword arguments.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cocoseg import storage
from cocoseg.config import JobConfig, ModelConfig, config_hash
from cocoseg.data.collate import ValBatch, collate_train, collate_val
from cocoseg.data.schema import iter_split_batches, read_manifest
from cocoseg.data.stage import INPUT_COLUMNS, AugmentBatch
from cocoseg.engine.ema import ModelEMA
from cocoseg.engine.loop import TrainParts, resolve_precision
from cocoseg.engine.optim import (
    OptimizerChoice,
    Schedule,
    build_optimizer,
    resolve_optimizer,
    scaled_weight_decay,
)
from cocoseg.engine.preview import render_validation_preview
from cocoseg.inference import Predictor, Protocol
from cocoseg.loss import SegmentationLoss
from cocoseg.metrics import COCOEvaluator, flatten_metrics, per_class_metrics
from cocoseg.model import build_model as _build_model
from cocoseg.model.weights import CheckpointError, ModelCard, import_reference, load_checkpoint
from cocoseg.structures import SegTargets

_VAL_CACHE_BYTES = 1 << 30

__all__ = [
    "RunInfo",
    "batches_per_epoch",
    "build_val_batches",
    "build_model",
    "build_schedule",
    "build_train_collate",
    "build_train_parts",
    "build_validator",
    "model_card",
    "render_preview",
    "resolve_recipe",
]


@dataclass(frozen=True)
class RunInfo:
    """What the driver resolved for one training run and hands, with the config, to every worker."""

    run_dir: str  # <storage.root>/runs/<run name> (local or s3://)
    mlflow_run_id: str
    batches_per_epoch: int
    recipe: OptimizerChoice  # resolved once by the driver (train.optimizer=auto), used as is
    snapshot_id: str
    snapshot_uri: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]


def build_model(model_cfg: ModelConfig) -> nn.Module:
    """The variant, with initial weights from ``model.weights`` when set.

    ``model.weights`` is a cocoseg checkpoint folder (``model.safetensors`` + card; a training
    run's ``weights/best`` qualifies) or a reference YOLOv8-seg ``.pt`` (read without executing
    pickle code).
    """
    src = model_cfg.weights
    if not src:
        return _build_model(model_cfg.variant, model_cfg.num_classes)
    if src.endswith(".pt"):
        state, card = import_reference(storage.read_bytes(src), src)
        if (card.variant, card.num_classes) != (model_cfg.variant, model_cfg.num_classes):
            raise CheckpointError(f"{src}: holds variant {card.variant} with {card.num_classes} classes, but the "
                                  f"config asks for {model_cfg.variant}/{model_cfg.num_classes} (model.variant, model.num_classes)")
        model = _build_model(card.variant, card.num_classes)
        model.load_state_dict(state)
        return model
    model, _ = load_checkpoint(src, num_classes=model_cfg.num_classes, variant=model_cfg.variant)
    return model.train()


def batches_per_epoch(train_images: int, world_size: int, batch_size: int) -> int:
    """Micro-batches each worker sees per epoch (Ray splits rows equally, dropping the remainder)."""
    return max(1, math.ceil((train_images // world_size) / batch_size))


def resolve_recipe(cfg: JobConfig, *, world_size: int, train_images: int) -> OptimizerChoice:
    """``train.optimizer`` resolved for this run (``auto``: from its iteration count, spec 9.2).

    ``train_images`` is the number of training images one epoch covers (all workers together).
    Pure: the driver (which logs the choice) and every worker get the same answer.
    """
    t = cfg.train
    return resolve_optimizer(t.optimizer, lr0=t.lr0, momentum=t.momentum, warmup_bias_lr=t.warmup_bias_lr,
                             train_images=train_images, global_batch=t.batch_size * world_size,
                             nominal_batch=t.nominal_batch, epochs=t.epochs, num_classes=cfg.model.num_classes)


def build_schedule(cfg: JobConfig, *, world_size: int, batches: int, choice: OptimizerChoice | None = None) -> Schedule:
    """The LR / momentum / accumulation schedule; ``choice`` (the resolved optimiser) supplies
    lr0, the momentum target and the bias warm-up LR (default: resolved from ``batches``)."""
    t = cfg.train
    if choice is None:
        choice = resolve_recipe(cfg, world_size=world_size, train_images=batches * t.batch_size * world_size)
    return Schedule(epochs=t.epochs, batches_per_epoch=batches, global_batch=t.batch_size * world_size,
                    lr0=choice.lr0, lrf=t.lrf, momentum=choice.momentum, warmup_epochs=t.warmup_epochs,
                    min_warmup_steps=t.warmup_min_steps,
                    warmup_momentum=t.warmup_momentum, warmup_bias_lr=choice.warmup_bias_lr,
                    nominal_batch=t.nominal_batch, cos_lr=t.cos_lr)


def build_train_parts(cfg: JobConfig, *, model: nn.Module, device: torch.device, world_size: int,
                      batches_per_epoch: int, train_images: int | None = None,
                      choice: OptimizerChoice | None = None) -> TrainParts:
    """Loss, optimiser, schedule, EMA and AMP around an already placed (maybe DDP) ``model``.

    ``choice`` is the run's resolved optimiser (the driver decides once per run, so a worker
    group restarted at another size keeps it); without it, ``train.optimizer`` is resolved here
    from ``train_images`` (all workers, per epoch; default ``batches_per_epoch * global batch``).
    """
    t = cfg.train
    bare = getattr(model, "module", model)
    global_batch = t.batch_size * world_size
    if choice is None:
        images = train_images if train_images is not None else batches_per_epoch * global_batch
        choice = resolve_recipe(cfg, world_size=world_size, train_images=images)
    optimizer = build_optimizer(model, name=choice.name, lr0=choice.lr0, momentum=choice.momentum,
                                weight_decay=scaled_weight_decay(t.weight_decay, t.nominal_batch, global_batch))
    amp_dtype = resolve_precision(t.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    schedule = build_schedule(cfg, world_size=world_size, batches=batches_per_epoch, choice=choice)
    return TrainParts(model=model, loss_fn=SegmentationLoss.from_model(bare), optimizer=optimizer,
                      schedule=schedule, ema=ModelEMA(bare, decay=t.ema_decay, tau=t.ema_tau), device=device,
                      amp_dtype=amp_dtype, scaler=scaler, grad_clip=t.grad_clip,
                      loss_scale=float(world_size) if hasattr(model, "no_sync") else 1.0)


def build_train_collate(cfg: JobConfig) -> Callable[[Any], Any]:
    return collate_train


def _val_metrics(evaluated: dict[str, Any]) -> dict[str, float]:
    """``val/{box,mask}_{ap50_95,ap50,ap75}`` plus per class ``val/{box,mask}_{ap50_95,ap50}/<name>``."""
    flat = flatten_metrics(evaluated)
    names = {"AP": "ap50_95", "AP50": "ap50", "AP75": "ap75"}
    out = {f"val/{kind}_{names[stat]}": flat[f"{kind}/{stat}"]
           for kind in ("box", "mask") for stat in names if f"{kind}/{stat}" in flat}
    return {**out, **per_class_metrics(evaluated, prefix="val/")}


def build_val_batches(cfg: JobConfig, snapshot_uri: str) -> Callable[[], Iterable[ValBatch]]:
    """The val split, letterboxed (``val`` preset), as a re-iterable of :class:`ValBatch`.

    Read in-process by the validating rank rather than streamed by Ray Data: starting a Ray Data
    execution costs seconds per epoch, more than letterboxing a validation set of the size a
    per-epoch check uses. The split is streamed from its shards a batch at a time (it used to be
    read whole, encoded images included: ~150 KB per COCO image on the validating rank); batches
    are kept in memory after the first full pass when they fit in ``_VAL_CACHE_BYTES``, larger
    splits are re-read per epoch.
    """
    manifest = read_manifest(snapshot_uri)
    rows = manifest.splits["val"].images
    limit = cfg.data.max_val_images
    rows = min(rows, limit) if limit else rows
    size = cfg.train.val_batch_size or 2 * cfg.train.batch_size
    stage = AugmentBatch(preset="val", imgsz=cfg.model.imgsz, seed=0, epoch=0, num_classes=cfg.model.num_classes,
                         mask_ratio=cfg.train.mask_ratio)
    keep = rows * 3 * cfg.model.imgsz ** 2 <= _VAL_CACHE_BYTES
    cache: list[ValBatch] = []
    complete: list[bool] = []  # set once a pass has run to its end (an abandoned pass caches nothing)

    def batches() -> Iterable[ValBatch]:
        if complete:
            yield from cache
            return
        cache.clear()
        for table in iter_split_batches(snapshot_uri, "val", columns=list(INPUT_COLUMNS), batch_rows=size,
                                        limit=limit):
            batch = collate_val(stage(table))
            if keep:
                cache.append(batch)
            yield batch
        if keep:
            complete.append(True)

    return batches


def _first_images(batch: ValBatch, n: int) -> tuple[torch.Tensor, SegTargets]:
    """The first ``n`` images of a batch and their targets (for the preview)."""
    t = batch.targets
    rows = t.batch_idx < n
    return batch.images[:n], SegTargets(t.batch_idx[rows], t.cls[rows], t.boxes_cxcywh_norm[rows], t.masks[:n])


def build_validator(cfg: JobConfig, val_batches: Callable[[], Iterable[ValBatch]], *, device: torch.device,
                    coco_gt: dict[str, Any], category_ids: list[int], class_names: list[str]
                    ) -> Callable[[nn.Module, int], tuple[dict[str, float], dict[str, Any]]]:
    """``validate(ema_module, epoch) -> (metrics, plots)`` with the COCO evaluator.

    ``val_batches()`` yields letterboxed :class:`ValBatch` es of the val split; ``coco_gt`` is the
    split as a COCO dict. Detections come from :class:`cocoseg.inference.Predictor` under the
    evaluation :class:`~cocoseg.inference.Protocol` (masks straight to RLE). Metrics:
    ``val/{box,mask}_{ap50_95,ap50,ap75}``, per class ``val/{box,mask}_{ap50_95,ap50}/<name>``
    and ``val/images``. ``plots``: ``preview`` (PNG of the first ``train.preview_images`` images,
    ground truth | prediction; None when 0) and ``curves`` (JSON-ready: the per-class PR curves at
    IoU 0.5 of boxes and masks and the box confusion matrix, which ``cocoseg.tracking`` draws).
    """
    evaluator = COCOEvaluator(coco_gt, category_ids=category_ids)
    protocol = Protocol(imgsz=cfg.model.imgsz)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolve_precision(cfg.train.amp, device)]
    preview_images = cfg.train.preview_images

    def validate(model: nn.Module, epoch: int) -> tuple[dict[str, float], dict[str, Any]]:
        # A copy with every BatchNorm folded into its convolution: the same outputs up to float
        # rounding, one pass less per layer (the training model itself is left as it is).
        model = copy.deepcopy(model).eval().fuse()
        predictor = Predictor(model, class_names=class_names, device=device, precision=precision).for_evaluation(protocol)
        evaluator.reset()
        preview, images = None, 0
        for batch in val_batches():
            pred, proto = predictor.forward(batch.images)
            evaluator.process(batch.image_ids.tolist(), predictor.postprocess(pred, proto, batch.letterboxes, masks="rle"))
            images += len(batch.letterboxes)
            if preview is None and preview_images > 0:  # the same forward, under the predict defaults' NMS
                shown = Predictor(model, class_names=class_names, imgsz=protocol.imgsz, device=device)
                n = preview_images
                preview = render_validation_preview(*_first_images(batch, n), shown, class_names,
                                                    outputs=(pred[:n], proto[:n]))
        evaluated = evaluator.evaluate()
        curves = {"epoch": epoch, "class_names": list(class_names),
                  "pr50": {kind: evaluated[t]["per_class_pr50"] for t, kind in (("bbox", "box"), ("segm", "mask"))},
                  "confusion": {"conf": 0.25, "iou": 0.45, "matrix": evaluator.confusion_matrix().tolist()}}
        return {**_val_metrics(evaluated), "val/images": float(images)}, {"preview": preview, "curves": curves}

    return validate


def render_preview(cfg: JobConfig, weights: str, snapshot_uri: str, class_names: tuple[str, ...] | list[str]) -> bytes | None:
    """The validation preview of a weights folder (asynchronous validation, ``engine/validation.py``):
    PNG bytes of the val split's first ``train.preview_images`` images, ground truth | prediction,
    as :func:`build_validator` draws them in-process (the predict defaults' NMS). None when 0."""
    n = cfg.train.preview_images
    if n <= 0:
        return None
    stage = AugmentBatch(preset="val", imgsz=cfg.model.imgsz, seed=0, epoch=0, num_classes=cfg.model.num_classes,
                         mask_ratio=cfg.train.mask_ratio)
    table = next(iter_split_batches(snapshot_uri, "val", columns=list(INPUT_COLUMNS), batch_rows=n, limit=n), None)
    if table is None:
        return None
    batch = collate_val(stage(table))
    model, _ = load_checkpoint(weights, num_classes=cfg.model.num_classes)
    shown = Predictor(model.fuse(), class_names=list(class_names), imgsz=cfg.model.imgsz, device=torch.device("cpu"))
    return render_validation_preview(*_first_images(batch, n), shown, list(class_names))


def model_card(cfg: JobConfig, *, snapshot_id: str, class_names: list[str], metrics: dict[str, float],
               epoch: int) -> ModelCard:
    """The card that travels with every checkpoint of this run."""
    kept = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
    return ModelCard(variant=cfg.model.variant, num_classes=cfg.model.num_classes, class_names=list(class_names),
                     imgsz=cfg.model.imgsz, data_snapshot=snapshot_id, config_hash=config_hash(cfg),
                     metrics={**kept, "epoch": float(epoch)}, source="cocoseg train")
