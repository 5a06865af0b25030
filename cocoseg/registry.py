"""MLflow Model Registry: versions, champion/challenger aliases and the promotion gate."""
