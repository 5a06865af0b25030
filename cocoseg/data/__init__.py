"""Data: COCO/YOLO sources, the Parquet snapshot schema, ingest validation, synthetic data, augmentation, collation."""
