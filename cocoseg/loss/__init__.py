"""Training loss of YOLOv8-seg: task-aligned assigner and the segmentation loss (layer L2)."""

from .assigner import Assignment, TaskAlignedAssigner
from .segment import LossGains, SegmentationLoss, pad_targets

__all__ = ["Assignment", "LossGains", "SegmentationLoss", "TaskAlignedAssigner", "pad_targets"]
