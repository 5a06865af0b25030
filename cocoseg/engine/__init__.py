"""The per-worker train loop (plain PyTorch), optimiser, schedule, EMA, checkpoints, and the one Ray adapter (worker.py)."""
