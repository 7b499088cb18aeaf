"""Tests of evaluation: metrics, feature extractor, segmentation usefulness, views and the HTML report.

`blob_case` builds the tiny labelled volumes these tests share; `write_blob_store` puts them in a real store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gem3d.anatomy import anatomy_outline
from gem3d.store import MANIFEST, init_store, publish_case, stage_case, write_table_atomic


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


def write_blob_store(root: Path, splits: dict[str, str], seed: int = 0, shape=(8, 24, 24)) -> Path:
    """A real Zarr store of `blob_case` volumes with a manifest: `splits` is {case_id: split}."""
    store = init_store(root, {"labels": {"0": "background", "1": "blob"}})
    rng = np.random.default_rng(seed)
    for case_id in splits:
        image, label = blob_case(rng, shape)
        publish_case(store, case_id, stage_case(store, case_id, image, label, {}, outline=anatomy_outline(image)))
    rows = [{"case_id": case_id, "split": split} for case_id, split in splits.items()]
    write_table_atomic(store / MANIFEST, pd.DataFrame(rows))
    return store
