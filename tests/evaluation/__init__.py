"""Tests of evaluation: metrics, feature extractor, segmentation usefulness, views and the HTML report.

`blob_case` builds the tiny labelled volumes these tests share.
"""

from __future__ import annotations

import numpy as np


def blob_case(rng: np.random.Generator, shape: tuple[int, int, int] = (8, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    """A dark noisy volume in [-1, 1] with one bright disc (label 1) over a few middle slices at a random place."""
    num_slices, height, width = shape
    label = np.zeros(shape, dtype=np.uint8)
    centre_y, centre_x = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
    y, x = np.mgrid[:height, :width]
    disc = (y - centre_y) ** 2 + (x - centre_x) ** 2 < (min(height, width) // 6) ** 2
    first = int(rng.integers(1, max(2, num_slices // 3)))
    label[first : first + num_slices // 2, disc] = 1
    image = rng.normal(-0.6, 0.08, shape) + 1.1 * label
    return np.clip(image, -1, 1).astype(np.float32), label
