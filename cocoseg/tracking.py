"""MLflow tracking for training runs (rank 0 only): params, per-epoch metrics, artifacts, offline buffering."""
