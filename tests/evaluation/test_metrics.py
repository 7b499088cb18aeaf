"""Metrics on hand-computed cases: PSNR/SSIM/MS-SSIM, slice profiles, seams, diversity, Frechet and MMD."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gem3d import metrics


def _smooth_volume(num_slices: int = 16, size: int = 32) -> np.ndarray:
    """A textured volume that changes slowly and evenly along Z (no seams)."""
    z, y, x = np.mgrid[:num_slices, :size, :size]
    return (0.4 * np.sin(x / 4.0 + z / 6.0) * np.cos(y / 5.0) + 0.02 * z).astype(np.float32)


def test_identical_volumes_give_capped_psnr_and_unit_ssim() -> None:
    volume = _smooth_volume()
    assert metrics.psnr(volume, volume) == metrics.PSNR_CAP_DB
    assert metrics.ssim(volume, volume) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ms_ssim(volume, volume) == pytest.approx(1.0, abs=1e-6)


def test_psnr_of_gaussian_noise_matches_the_analytic_value() -> None:
    rng = np.random.default_rng(0)
    truth = _smooth_volume()
    sigma = 0.05
    noisy = truth + rng.normal(0.0, sigma, truth.shape)
    assert metrics.psnr(noisy, truth) == pytest.approx(10 * math.log10(2.0**2 / sigma**2), abs=0.1)
    assert metrics.psnr(noisy, truth, data_range=1.0) == pytest.approx(10 * math.log10(1.0 / sigma**2), abs=0.1)


def test_ssim_and_ms_ssim_fall_as_noise_grows() -> None:
    rng = np.random.default_rng(1)
    truth = _smooth_volume()
    small = truth + rng.normal(0.0, 0.05, truth.shape)
    large = truth + rng.normal(0.0, 0.3, truth.shape)
    assert 1.0 > metrics.ssim(small, truth) > metrics.ssim(large, truth)
    assert 1.0 > metrics.ms_ssim(small, truth) > metrics.ms_ssim(large, truth)


def test_ms_ssim_uses_fewer_scales_on_small_slices_and_rejects_tiny_ones() -> None:
    assert [metrics.ms_ssim_scales(size) for size in (32, 28, 16, 14, 7)] == [3, 3, 2, 2, 1]
    rng = np.random.default_rng(0)
    truth = rng.uniform(-1, 1, size=(4, 16, 16))
    assert metrics.ms_ssim(truth, truth) == pytest.approx(1.0)
    assert metrics.ms_ssim(truth + 0.3 * rng.standard_normal(truth.shape), truth) < 1.0
    volume = np.zeros((4, 6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="at least 7 pixels"):
        metrics.ms_ssim(volume, volume)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(np.zeros((4, 32, 32)), np.zeros((5, 32, 32)))


def test_adjacent_slice_profile_is_the_mean_absolute_step() -> None:
    levels = np.array([0.0, 0.1, 0.3, 0.6, 0.2])
    volume = np.broadcast_to(levels[:, None, None], (5, 3, 3))
    np.testing.assert_allclose(metrics.adjacent_slice_profile(volume), [0.1, 0.2, 0.3, 0.4])


def test_seam_score_is_the_ratio_of_boundary_steps_to_inner_steps() -> None:
    levels = np.array([0.0, 0.1, 0.2, 0.7, 0.8, 0.9])  # steps 0.1, 0.1, 0.5, 0.1, 0.1
    volume = np.broadcast_to(levels[:, None, None], (6, 2, 2))
    assert metrics.seam_score(volume, [3]) == pytest.approx(5.0)


def test_planted_seam_scores_clearly_above_one_and_smooth_volume_near_one() -> None:
    rng = np.random.default_rng(2)
    smooth = _smooth_volume() + rng.normal(0.0, 0.01, (16, 32, 32))
    seamed = smooth.copy()
    seamed[8:] += 0.15
    assert metrics.seam_score(smooth, [8]) == pytest.approx(1.0, abs=0.15)
    assert metrics.seam_score(seamed, [8]) > 3.0


def test_seam_score_rejects_boundaries_outside_the_volume() -> None:
    with pytest.raises(ValueError, match="boundaries"):
        metrics.seam_score(_smooth_volume(), [0])
    with pytest.raises(ValueError, match="boundaries"):
        metrics.seam_score(_smooth_volume(), [16])


def test_diversity_is_one_for_copies_and_lower_for_different_variants() -> None:
    rng = np.random.default_rng(3)
    base = _smooth_volume()
    copies = [base, base.copy(), base.copy()]
    close = [base + rng.normal(0, 0.05, base.shape) for _ in range(3)]
    far = [base + rng.normal(0, 0.4, base.shape) for _ in range(3)]
    assert metrics.diversity(copies) == pytest.approx(1.0, abs=1e-6)
    assert 1.0 > metrics.diversity(close) > metrics.diversity(far)
    with pytest.raises(ValueError, match="two variants"):
        metrics.diversity([base])


def test_frechet_distance_of_identical_sets_is_zero_and_of_shifted_means_the_squared_shift() -> None:
    rng = np.random.default_rng(4)
    features = rng.normal(size=(300, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(features, features + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_of_scaled_features_matches_the_gaussian_formula() -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(400, 4)) + 1.0
    # b = 2a: mean difference = mean(a), C_b = 4 C_a, so Tr(C_a + 4 C_a - 2 * 2 C_a) = Tr(C_a)
    expected = float(features.mean(0) @ features.mean(0) + np.trace(np.cov(features, rowvar=False)))
    assert metrics.frechet_distance(features, 2 * features) == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_is_finite_with_fewer_samples_than_dimensions() -> None:
    rng = np.random.default_rng(6)
    value = metrics.frechet_distance(rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1.0)
    assert np.isfinite(value) and value > 0


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_shifted() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    same = metrics.mmd(a, b)
    shifted = metrics.mmd(a, b + 1.0)
    assert abs(same) < 0.01
    assert shifted > 0.1


def test_mmd_matches_a_hand_computed_unbiased_estimate() -> None:
    points = np.array([[0.0], [2.0]])
    # k = exp(-d^2 / 2): within-set off-diagonal exp(-2); cross mean (1 + exp(-2)) / 2
    expected = 2 * math.exp(-2) - (1 + math.exp(-2))
    assert metrics.mmd(points, points.copy(), bandwidth=1.0) == pytest.approx(expected)


def test_running_moments_fed_in_chunks_equal_the_moments_of_all_rows() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(n, 5)) @ rng.normal(size=(5, 5)) for n in (3, 7, 1, 12)]
    moments = metrics.FeatureMoments()
    for chunk in chunks:
        moments.update(chunk)
    rows = np.concatenate(chunks)
    np.testing.assert_allclose(moments.mean, rows.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(moments.covariance, np.cov(rows, rowvar=False), rtol=1e-8, atol=1e-12)
    other = rng.normal(1.0, 2.0, size=(30, 5))
    streamed = metrics.FeatureMoments()
    streamed.update(other)
    assert metrics.frechet_from_moments(moments, streamed) == pytest.approx(metrics.frechet_distance(rows, other))


def test_reservoir_keeps_every_row_below_capacity_and_a_uniform_bounded_sample_above() -> None:
    rows = np.arange(20, dtype=float)[:, None]
    small = metrics.FeatureReservoir(capacity=32, seed=0)
    small.update(rows[:7])
    small.update(rows[7:])
    np.testing.assert_array_equal(small.sample, rows)
    kept_first, kept_last = 0, 0
    for seed in range(400):
        reservoir = metrics.FeatureReservoir(capacity=5, seed=seed)
        for chunk in np.array_split(rows, 4):
            reservoir.update(chunk)
        assert reservoir.sample.shape == (5, 1) and reservoir.seen == 20
        kept_first += 0.0 in reservoir.sample
        kept_last += 19.0 in reservoir.sample
    # each row is kept with probability 5 / 20
    assert abs(kept_first / 400 - 0.25) < 0.07 and abs(kept_last / 400 - 0.25) < 0.07
