"""The YOLOv8 segmentation loss: task-aligned assigner, CIoU + DFL box loss, BCE class loss, prototype mask loss."""
