"""Source datasets -> immutable Parquet snapshots: sources (COCO JSON, YOLO layout; local or
``s3://``), validation and quarantine, the snapshot writer, and the ingest job's shard tasks
(:mod:`cocoseg.ingest.job`). The snapshot schema is :mod:`cocoseg.data.schema`, where training
input reads it too."""
