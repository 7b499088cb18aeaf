"""Matching a generated volume's label intensities to its real informed slice (`sampling.match_label_means`).

The informed slice carries the patient's look, but a briefly trained model draws some regions with too little of
it: on the small abdomen model the synthetic kidney's mean followed the informed case's contrast phase with a
slope of 0.07 (1 carries it fully). A real informed slice shows, for every label on it, what that region should
look like; shifting the region's voxels by one offset puts its mean there and keeps the model's texture.
"""

from __future__ import annotations

import numpy as np

from gem3d.label_intensity import label_means

MIN_SHOWN_VOXELS = 10
"""A label moves only when the informed slice shows it in at least this many voxels: fewer give a mean that is
mostly noise."""


def match_label_means(
    volume: np.ndarray, mask: np.ndarray, informed: np.ndarray, informed_label: np.ndarray
) -> np.ndarray:
    """Shift each label of `mask` that the informed slice shows so its mean in `volume` equals the slice's.

    `volume` and `mask` are `(Z, H, W)`, `informed` and `informed_label` `(H, W)`. Background and labels the
    slice does not show keep the model's values, and every region keeps its variation. Returns a new float32 volume.
    """
    matched = np.array(volume, dtype=np.float32, copy=True)
    for value, target in label_means(informed, informed_label, MIN_SHOWN_VOXELS).items():
        inside = mask == value
        if value and inside.any():
            matched[inside] += np.float32(target - matched[inside].mean(dtype=np.float64))
    return matched
