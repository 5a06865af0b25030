"""COCO evaluation (bbox and segm) on pycocotools (layer L2)."""

from .coco import COCOEvaluator, EvaluationError, detections_to_coco, flatten_metrics, per_class_metrics

__all__ = ["COCOEvaluator", "EvaluationError", "detections_to_coco", "flatten_metrics", "per_class_metrics"]
