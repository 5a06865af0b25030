"""Training input: the snapshot schema both stages read, and snapshot rows -> model-ready batches
(decode, instances, augment, the persistent input actors of :mod:`.train_input`, collate).
Sources -> snapshots is :mod:`cocoseg.ingest`."""
