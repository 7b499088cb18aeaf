"""De-enhancement statistics: how consistent the appearance of a dataset is, before and after regenerating
every case from its own mask with one reference informed slice ("Uses beyond enhancement").

Per case, the intensities of the foreground (the head or body, not only the labels) are summarised; across
cases, the spread of each summary says how uneven the normalisation is. De-enhancement should shrink it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

STATISTICS = ("mean", "std", "p5", "p50", "p95")
NEGLIGIBLE_SPREAD = 1e-6
"""Spreads at or below this (in intensity units) are rounding noise: no ratio, and no shrinking."""


def body_mask(image: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """Voxels brighter than the background level (the 1st percentile) by `tolerance` of the range."""
    image = np.asarray(image, dtype=np.float64)
    background = float(np.percentile(image, 1))
    margin = tolerance * max(float(image.max()) - float(image.min()), 1e-12)
    return image > background + margin


def foreground_intensity_stats(image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean, std, p5, p50, p95 of the intensities inside `mask` (a body mask or a label; None: `body_mask`)."""
    image = np.asarray(image, dtype=np.float64)
    selected = body_mask(image) if mask is None else np.asarray(mask).astype(bool)
    if selected.shape != image.shape:
        raise ValueError(f"mask shape {selected.shape} differs from image shape {image.shape}")
    values = image[selected]
    if values.size == 0:
        raise ValueError("no foreground voxels: the image is constant or the mask is empty")
    p5, p50, p95 = (float(value) for value in np.percentile(values, (5, 50, 95)))
    return {"mean": float(values.mean()), "std": float(values.std()), "p5": p5, "p50": p50, "p95": p95}


def spread(stats_rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Across-case spread of each statistic: population std and interquartile range (p75 - p25)."""
    rows = list(stats_rows)
    if not rows:
        raise ValueError("no rows to compute a spread from")
    result = {}
    for name in STATISTICS:
        values = np.asarray([float(row[name]) for row in rows])
        q25, q75 = np.percentile(values, (25, 75))
        result[name] = {"std": float(values.std()), "iqr": float(q75 - q25)}
    return result


def _ratio(after: float, before: float) -> float | None:
    return after / before if before > NEGLIGIBLE_SPREAD else None


def deenhancement_report(
    before_rows: Iterable[Mapping[str, Any]], after_rows: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """How much the across-case spread shrank: per statistic the std and IQR before and after, their
    ratios (after / before; below 1 means more consistent; None when the spread before was negligible), and
    the statistics whose std shrank by more than `NEGLIGIBLE_SPREAD`. With no volume after (all quarantined by the
    synthetic contract) there is no spread to compare: the report says so with empty statistics."""
    before_rows, after_rows = list(before_rows), list(after_rows)
    if not after_rows:
        return {
            "cases_before": len(before_rows),
            "cases_after": 0,
            "statistics": {},
            "shrank": [],
            "mean_std_ratio": None,
        }
    before, after = spread(before_rows), spread(after_rows)
    statistics = {
        name: {
            "std_before": before[name]["std"],
            "std_after": after[name]["std"],
            "std_ratio": _ratio(after[name]["std"], before[name]["std"]),
            "iqr_before": before[name]["iqr"],
            "iqr_after": after[name]["iqr"],
            "iqr_ratio": _ratio(after[name]["iqr"], before[name]["iqr"]),
        }
        for name in STATISTICS
    }
    ratios = [entry["std_ratio"] for entry in statistics.values() if entry["std_ratio"] is not None]
    return {
        "cases_before": len(before_rows),
        "cases_after": len(after_rows),
        "statistics": statistics,
        "shrank": [
            name for name, entry in statistics.items() if entry["std_after"] < entry["std_before"] - NEGLIGIBLE_SPREAD
        ],
        "mean_std_ratio": float(np.mean(ratios)) if ratios else None,
    }
