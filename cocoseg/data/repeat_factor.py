"""Repeat-factor sampling (LVIS, Gupta et al. 2019): images holding rare classes are seen more often.

With threshold ``t`` (``data.repeat_factor_threshold``; 0: off) and ``f_c`` the fraction of the
training images that hold class ``c``, class ``c``'s factor is ``max(1, sqrt(t / f_c))`` and an
image's factor ``r`` is the largest factor of its classes (1 for an image without instances). Each
epoch an image appears ``floor(r)`` times plus once more with probability ``r - floor(r)``
(stochastic rounding, seeded by (seed, epoch): every rank draws the same copies).

:func:`image_repeat_factors` computes ``r`` once per run (the trainer, from the manifest's per-class
image counts and the per-image class sets, see :func:`cocoseg.data.class_stats.read_image_classes`);
:func:`with_repeats` adds one epoch's extra copies to the epoch plan of
:func:`cocoseg.data.stage.epoch_chunks`, spread over the plan at seeded positions so that each rank's
equal part holds its share of them and every copy still goes to exactly one rank. An extra copy is a
one-row run: it costs the read of its row group (~6 COCO images) unless a neighbour shares it.

This module does not import Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["class_repeat_factors", "expected_rows", "image_repeat_factors", "with_repeats"]

_MASK63 = (1 << 63) - 1
_REPEAT_TAG = 0x72657074  # "rept": this plan's own random stream, apart from the shuffle's


def class_repeat_factors(class_images: Sequence[int], num_images: int, threshold: float) -> np.ndarray:
    """(nc,) float64 ``max(1, sqrt(t / f_c))`` with ``f_c = class_images[c] / num_images``; a class in
    no image gets 1 (it cannot raise any image's factor)."""
    counts = np.asarray(class_images, np.float64)
    out = np.ones(len(counts))
    if threshold <= 0 or num_images <= 0:
        return out
    seen = counts > 0
    out[seen] = np.maximum(1.0, np.sqrt(threshold / (counts[seen] / float(num_images))))
    return out


def image_repeat_factors(image_classes: Sequence[Sequence[int]], class_factors: np.ndarray) -> np.ndarray:
    """(n,) float32: per image, the largest factor of its classes (1 without instances).

    ``image_classes[i]``: the class indices (0..nc-1) of image ``i``'s instances (repeats allowed)."""
    out = np.ones(len(image_classes), np.float32)
    for i, classes in enumerate(image_classes):
        if len(classes):
            out[i] = max(1.0, float(class_factors[np.asarray(classes, np.int64)].max()))
    return out


def expected_rows(factors: Sequence[np.ndarray], limit: int = 0) -> float:
    """Rows one epoch holds on average: the sum of the factors of the first ``limit`` rows (0: all)."""
    flat = np.concatenate([np.asarray(f, np.float64) for f in factors]) if factors else np.zeros(0)
    return float(flat[:limit].sum() if limit > 0 else flat.sum())


def with_repeats(runs: Sequence[tuple[int, int, int]], factors: Sequence[np.ndarray], *, seed: int,
                 epoch: int) -> list[tuple[int, int, int]]:
    """``runs`` (an epoch plan's ``(shard, first row, end row)``, in plan order) plus this epoch's extra
    copies as one-row runs, each inserted at a seeded row position of the plan.

    ``factors[shard][row]`` is that row's repeat factor (>= 1). Only rows the plan holds are repeated.
    The same (runs, factors, seed, epoch) give the same plan on any machine.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed & _MASK63, epoch & _MASK63, _REPEAT_TAG]))
    extras: list[tuple[int, int, int]] = []
    for shard, a, b in sorted(runs):
        r = np.asarray(factors[shard][a:b], np.float64)
        whole = np.floor(r)
        copies = whole + (rng.random(len(r)) < r - whole) - 1  # extra copies of each row
        rows = np.repeat(np.arange(a, b), np.maximum(copies, 0).astype(np.int64))
        extras += [(shard, int(k), int(k) + 1) for k in rows]
    if not extras:
        return list(runs)
    total = sum(b - a for _, a, b in runs)
    order = rng.permutation(len(extras))
    where = np.sort(rng.integers(0, total + 1, len(extras)))  # insert before this many plan rows
    return _insert(runs, [extras[int(k)] for k in order], where)


def _insert(runs: Sequence[tuple[int, int, int]], extras: list[tuple[int, int, int]],
            where: np.ndarray) -> list[tuple[int, int, int]]:
    """``runs`` with ``extras[j]`` placed before row ``where[j]`` (sorted) of their concatenation."""
    out: list[tuple[int, int, int]] = []
    j, pos = 0, 0
    for shard, a, b in runs:
        start = a
        while j < len(extras) and where[j] < pos + (b - a):
            cut = a + int(where[j]) - pos
            if cut > start:
                out.append((shard, start, cut))
                start = cut
            out.append(extras[j])
            j += 1
        if b > start:
            out.append((shard, start, b))
        pos += b - a
    out += extras[j:]
    return out
