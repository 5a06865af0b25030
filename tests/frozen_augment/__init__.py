"""A frozen copy of cocoseg's input stage as it was before issue 21 (Pillow, per-instance numpy
rasterisation, a 2x mosaic canvas): the comparison for ``tests/test_augment_equivalence.py``,
which checks that the OpenCV rewrite in ``cocoseg/data`` keeps the augmentation's meaning (the
same random draws, the same geometry within a pixel). Test code only: never imported by cocoseg.
Copied from ``cocoseg/data/{augment,decode,instances,letterbox}.py`` at commit 0857f69, imports
made local, nothing else changed."""
