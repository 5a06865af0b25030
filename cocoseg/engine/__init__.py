"""Training: the config edge (:mod:`.build`), the driver (:mod:`.trainer`: checks, MLflow run,
input actors, ``TorchTrainer``) and its cluster checks (:mod:`.checks`, :mod:`.capacity`), the
per-worker Ray adapter (:mod:`.worker`) over the plain-PyTorch loop, optimiser, EMA and checkpoints."""
