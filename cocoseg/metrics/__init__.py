"""COCO evaluation (bbox and segm) on pycocotools."""
