"""De-enhancement statistics on hand-made arrays whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gem3d.normalize import STATISTICS, body_mask, deenhancement_report, foreground_intensity_stats, spread


def _head(body_value: float, lesion_value: float) -> np.ndarray:
    """A (4, 6, 6) volume: background -1, a 4x4 'head' per slice, and a 2x2 'lesion' inside it."""
    image = np.full((4, 6, 6), -1.0, dtype=np.float32)
    image[:, 1:5, 1:5] = body_value
    image[:, 2:4, 2:4] = lesion_value
    return image


def test_stats_over_an_explicit_mask_match_hand_computed_values():
    image = np.arange(10, dtype=np.float32).reshape(1, 2, 5)
    mask = np.zeros_like(image, dtype=bool)
    mask[0, 0, :] = True  # values 0..4
    stats = foreground_intensity_stats(image, mask)
    assert stats == pytest.approx({"mean": 2.0, "std": math.sqrt(2.0), "p5": 0.2, "p50": 2.0, "p95": 3.8})


def test_default_foreground_is_the_whole_head_not_only_the_lesion():
    image = _head(body_value=0.0, lesion_value=0.8)
    assert body_mask(image).sum() == 4 * 16
    stats = foreground_intensity_stats(image)
    assert stats["mean"] == pytest.approx((12 * 0.0 + 4 * 0.8) / 16)
    assert stats["p50"] == pytest.approx(0.0) and stats["p95"] == pytest.approx(0.8)


def test_stats_reject_an_empty_foreground_or_a_mismatched_mask():
    with pytest.raises(ValueError, match="no foreground"):
        foreground_intensity_stats(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="shape"):
        foreground_intensity_stats(np.ones((2, 3, 3)), np.ones((2, 3, 4)))


def test_spread_is_the_population_std_and_interquartile_range_of_each_statistic():
    rows = [{name: value * (index + 1) for index, name in enumerate(STATISTICS)} for value in (1.0, 2.0, 3.0, 4.0)]
    result = spread(rows)
    assert result["mean"] == pytest.approx({"std": math.sqrt(1.25), "iqr": 1.5})
    assert result["p95"] == pytest.approx({"std": 5 * math.sqrt(1.25), "iqr": 7.5})
    with pytest.raises(ValueError, match="no rows"):
        spread([])


def test_report_says_how_much_the_spread_shrank():
    before = [foreground_intensity_stats(_head(body, body + 0.5)) for body in (-0.6, -0.2, 0.2, 0.4)]
    after = [foreground_intensity_stats(_head(body, body + 0.5)) for body in (0.0, 0.02, 0.04, 0.06)]
    report = deenhancement_report(before, after)
    assert report["cases_before"] == report["cases_after"] == 4
    mean = report["statistics"]["mean"]
    assert mean["std_before"] == pytest.approx(spread(before)["mean"]["std"])
    assert mean["std_ratio"] == pytest.approx(mean["std_after"] / mean["std_before"])
    assert mean["std_ratio"] < 0.1 and mean["iqr_ratio"] < 0.1
    assert set(report["shrank"]) == {"mean", "p5", "p50", "p95"}
    assert report["statistics"]["std"]["std_before"] == pytest.approx(0.0, abs=1e-7)
    assert report["statistics"]["std"]["std_ratio"] is None
    assert report["mean_std_ratio"] == pytest.approx(
        np.mean([report["statistics"][name]["std_ratio"] for name in ("mean", "p5", "p50", "p95")])
    )


def test_a_deenhancement_with_every_volume_quarantined_reports_no_spread_instead_of_failing():
    before = [foreground_intensity_stats(np.linspace(-1, 1, 64).reshape(4, 4, 4))]
    report = deenhancement_report(before, [])
    assert report["cases_after"] == 0 and report["statistics"] == {} and report["mean_std_ratio"] is None
