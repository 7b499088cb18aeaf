"""Mean image intensity inside each label: how the synthetic contract compares generated volumes with real ones.

A generated volume is clipped to `[-1, 1]`, so its range says little; what the mask promises is that each
labelled region looks like that region in the real cases. The reference is, per label, the range of the
per-case mean intensity inside the label over the real training cases (`real_label_mean_ranges`).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from gem3d.splits import store_cases_of_split
from gem3d.store import manifest_digest, open_case_arrays

REFERENCE_SLICES = 32
"""At most this many evenly spaced slices of each real case are read: the means of a few thousand voxels per
label are stable, and reading whole 512x512 volumes of a large training split would not be bounded."""


def label_means(image: np.ndarray, label: np.ndarray, min_voxels: int = 1) -> dict[int, float]:
    """Mean of the finite `image` voxels inside each label that `label` holds in at least `min_voxels` of them
    (background 0 included)."""
    values, labels = np.asarray(image, dtype=np.float64).ravel(), np.asarray(label).ravel().astype(np.int64)
    finite = np.isfinite(values)
    counts = np.bincount(labels[finite])
    sums = np.bincount(labels[finite], weights=values[finite])
    return {int(value): float(sums[value] / counts[value]) for value in np.flatnonzero(counts >= max(min_voxels, 1))}


def case_label_means(store: str | Path, case_id: str, max_slices: int = REFERENCE_SLICES) -> dict[int, float]:
    """`label_means` of a stored case, over at most `max_slices` evenly spaced slices."""
    image, label = open_case_arrays(store, case_id)
    step = math.ceil(image.shape[0] / max_slices)
    return label_means(image[::step], label[::step])


def real_label_mean_ranges(store: str | Path, split: str = "train") -> dict[int, tuple[float, float]]:
    """Per label, (lowest, highest) per-case mean intensity inside it over the store's cases of `split`.

    Computed once per process for a given manifest (the store's content), since every synthesis batch asks.
    """
    return _ranges(str(Path(store).resolve()), split, manifest_digest(store))


@lru_cache(maxsize=4)
def _ranges(store: str, split: str, digest: str) -> dict[int, tuple[float, float]]:
    """The ranges of `real_label_mean_ranges`; `digest` (the manifest's) makes a changed store recompute."""
    seen: dict[int, list[float]] = {}
    for case_id in store_cases_of_split(store, split):
        for value, mean in case_label_means(store, case_id).items():
            seen.setdefault(value, []).append(mean)
    return {value: (min(means), max(means)) for value, means in sorted(seen.items())}
