"""COCO evaluation (bbox and segm) on faster-coco-eval or pycocotools (layer L2)."""

from .coco import (
    DEFAULT_SCORER,
    SCORERS,
    COCOEvaluator,
    EvaluationError,
    detections_to_coco,
    flatten_metrics,
    per_class_metrics,
    scorer_version,
)

__all__ = ["DEFAULT_SCORER", "SCORERS", "COCOEvaluator", "EvaluationError", "detections_to_coco", "flatten_metrics",
           "per_class_metrics", "scorer_version"]
