"""Fidelity, volumetric consistency, diversity and distribution-distance metrics for `(Z, H, W)` volumes.

Distribution distances can be computed from streams: `FeatureMoments` (Frechet) and `FeatureReservoir`
(MMD on a bounded uniform sample) take one volume's features at a time.

Conventions (fixed, so numbers are comparable across runs):
- Volumes are float arrays in `[-1, 1]` (data range 2).
- PSNR is computed over the whole volume (one MSE over all voxels) with MONAI's `PSNRMetric`; identical
  volumes have MSE 0 and would give infinity, so PSNR is capped at `PSNR_CAP_DB`.
- SSIM and MS-SSIM are computed slice-wise in 2D on the axial slices and averaged over slices, with MONAI's
  `SSIMMetric` (Gaussian window 11, sigma 1.5) and `MultiScaleSSIMMetric` with 3 scales (Gaussian window 7,
  sigma 1.5, weights = the first three standard MS-SSIM weights renormalised to sum 1). The standard
  5-scale MS-SSIM needs slices of at least 176 pixels; 3 scales with window 7 work from 28x28 slices
  (MONAI requires `size // 4 > 6`), which covers the 32x32 tiny preset; smaller slices use fewer scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import scipy.linalg
import torch
from einops import rearrange
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric

DATA_RANGE = 2.0
PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
MS_SSIM_WINDOW = 7
MS_SSIM_SIGMA = 1.5
_STANDARD_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)
MS_SSIM_WEIGHTS = tuple(weight / sum(_STANDARD_MS_SSIM_WEIGHTS) for weight in _STANDARD_MS_SSIM_WEIGHTS)


def ms_ssim_scales(size: int) -> int:
    """Scales MS-SSIM can use on `size`-pixel slices: up to 3, as many as keep `size // 2**(s-1) > window - 1`."""
    feasible = [s for s in range(len(MS_SSIM_WEIGHTS), 0, -1) if size // 2 ** (s - 1) > MS_SSIM_WINDOW - 1]
    if not feasible:
        raise ValueError(f"MS-SSIM needs slices of at least {MS_SSIM_WINDOW} pixels, got {size}")
    return feasible[0]


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both volumes as `(Z, 1, H, W)` float64 tensors: the axial slices as a batch of 2D images."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (Z, H, W) volumes of one shape, got {pred.shape} and {truth.shape}")
    as_slices = [torch.from_numpy(rearrange(v.astype(np.float64), "z h w -> z 1 h w")) for v in (pred, truth)]
    return as_slices[0], as_slices[1]


def psnr(pred: np.ndarray, truth: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """PSNR in dB over the whole volume, capped at `PSNR_CAP_DB` (reached by identical volumes)."""
    pred_t, truth_t = _pair(pred, truth)
    # (Z, 1, H, W) -> (1, Z*H*W): one MSE over all voxels
    value = PSNRMetric(max_val=data_range, reduction="none")(
        rearrange(pred_t, "z c h w -> 1 (z c h w)"), rearrange(truth_t, "z c h w -> 1 (z c h w)")
    )
    return float(min(value.item(), PSNR_CAP_DB))


def ssim(pred: np.ndarray, truth: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Mean over axial slices of 2D SSIM (Gaussian window 11, sigma 1.5)."""
    pred_t, truth_t = _pair(pred, truth)
    metric = SSIMMetric(
        spatial_dims=2, data_range=data_range, win_size=SSIM_WINDOW, kernel_sigma=SSIM_SIGMA, reduction="none"
    )
    return float(metric(pred_t, truth_t).mean().item())


def ms_ssim(pred: np.ndarray, truth: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Mean over axial slices of 2D MS-SSIM (window 7, sigma 1.5) with 3 scales from 28-pixel slices up;
    smaller slices use fewer scales (`ms_ssim_scales`), so compare values only at one in-plane size."""
    pred_t, truth_t = _pair(pred, truth)
    scales = ms_ssim_scales(min(pred_t.shape[-2:]))
    weights = MS_SSIM_WEIGHTS[:scales]
    metric = MultiScaleSSIMMetric(
        spatial_dims=2,
        data_range=data_range,
        kernel_size=MS_SSIM_WINDOW,
        kernel_sigma=MS_SSIM_SIGMA,
        weights=tuple(weight / sum(weights) for weight in weights),
        reduction="none",
    )
    return float(metric(pred_t, truth_t).mean().item())


def adjacent_slice_profile(volume: np.ndarray) -> np.ndarray:
    """Mean absolute difference between consecutive axial slices: entry `i` compares slices `i` and `i + 1`."""
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3 or volume.shape[0] < 2:
        raise ValueError(f"expected a (Z, H, W) volume with Z >= 2, got {volume.shape}")
    return np.abs(np.diff(volume, axis=0)).mean(axis=(1, 2))  # (Z-1,)


def seam_score(volume: np.ndarray, boundaries: Sequence[int]) -> float:
    """Mean slice-to-slice change across window boundaries over the mean change inside windows; 1.0 = no seam.

    A boundary `b` is the first slice of a new window: the step from slice `b - 1` to `b` crosses it.
    """
    profile = adjacent_slice_profile(volume)
    num_slices = profile.shape[0] + 1
    crossing = sorted(set(int(b) for b in boundaries))
    if not crossing:
        raise ValueError("seam_score needs at least one window boundary")
    if crossing[0] < 1 or crossing[-1] >= num_slices:
        raise ValueError(f"boundaries must lie in [1, {num_slices - 1}], got {crossing}")
    across_mask = np.zeros(profile.shape[0], dtype=bool)
    across_mask[[b - 1 for b in crossing]] = True
    if across_mask.all():
        raise ValueError("every slice step crosses a boundary: nothing inside windows to compare with")
    across, inside = profile[across_mask].mean(), profile[~across_mask].mean()
    if inside == 0:
        return 1.0 if across == 0 else float("inf")
    return float(across / inside)


def diversity(variants: Sequence[np.ndarray], data_range: float = DATA_RANGE) -> float:
    """Mean pairwise MS-SSIM between variants generated for one case (lower = more diverse)."""
    if len(variants) < 2:
        raise ValueError(f"diversity needs at least two variants, got {len(variants)}")
    return float(np.mean([ms_ssim(a, b, data_range) for a, b in combinations(variants, 2)]))


def _features(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{name} must be (N, D) with N >= 2, got {features.shape}")
    return features


class FeatureMoments:
    """Running count, sum and sum of outer products of (N, D) feature rows: a Gaussian fit in O(D^2) memory.

    Feed it one volume's features at a time; `mean` and `covariance` equal those of all rows fed so far.
    """

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> None:
        """Add the rows of an (N, D) feature array."""
        rows = np.asarray(features, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"features must be (N, D), got {rows.shape}")
        if self._sum is None:
            self._sum, self._outer = np.zeros(rows.shape[1]), np.zeros((rows.shape[1], rows.shape[1]))
        if rows.shape[1] != self._sum.shape[0]:
            raise ValueError(f"feature dimension {rows.shape[1]} differs from {self._sum.shape[0]} seen before")
        self.count += rows.shape[0]
        self._sum += rows.sum(axis=0)
        self._outer += rows.T @ rows

    @property
    def mean(self) -> np.ndarray:
        """Mean feature vector `(D,)` of every row fed."""
        self._check()
        return self._sum / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance `(D, D)` of every row fed (as `np.cov(rows, rowvar=False)`)."""
        self._check()
        mean = self.mean
        return (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)

    def _check(self) -> None:
        if self.count < 2:
            raise ValueError(f"a Gaussian fit needs at least 2 feature rows, got {self.count}")


class FeatureReservoir:
    """A uniform random sample of at most `capacity` feature rows from a stream (reservoir sampling).

    Holds every row, in order, while fewer than `capacity` have been fed, so small sets are used whole.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self._rows: list[np.ndarray] = []
        self._draw = np.random.default_rng(seed)

    def update(self, features: np.ndarray) -> None:
        """Offer the rows of an (N, D) feature array."""
        for row in np.asarray(features, dtype=np.float64):
            if len(self._rows) < self.capacity:
                self._rows.append(row)
            else:
                slot = int(self._draw.integers(self.seen + 1))
                if slot < self.capacity:
                    self._rows[slot] = row
            self.seen += 1

    @property
    def sample(self) -> np.ndarray:
        """The sampled rows `(min(seen, capacity), D)`."""
        return np.stack(self._rows) if self._rows else np.zeros((0, 0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (the FID formula)."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    return frechet_from_moments(_moments(a), _moments(b), eps)


def _moments(features: np.ndarray) -> FeatureMoments:
    moments = FeatureMoments()
    moments.update(features)
    return moments


def frechet_from_moments(moments_a: FeatureMoments, moments_b: FeatureMoments, eps: float = 1e-6) -> float:
    """Frechet distance between the Gaussians of two running fits (the FID formula).

    `||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 sqrt(C_a C_b))`; when the matrix square root is singular or not
    finite, `eps * I` is added to both covariances; a negligible imaginary part from round-off is dropped.
    """
    if moments_a.mean.shape != moments_b.mean.shape:
        raise ValueError(f"feature dimensions differ: {moments_a.mean.shape[0]} and {moments_b.mean.shape[0]}")
    mean_diff = moments_a.mean - moments_b.mean
    cov_a, cov_b = np.atleast_2d(moments_a.covariance), np.atleast_2d(moments_b.covariance)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov_a.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    distance = mean_diff @ mean_diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)
    return float(max(distance, 0.0))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    squared = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T
    return np.maximum(squared, 0.0)


def mmd(features_a: np.ndarray, features_b: np.ndarray, kernel: str = "rbf", bandwidth: float | None = None) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy between two (N, D) feature sets.

    RBF kernel `exp(-||x - y||^2 / (2 bandwidth^2))`; the default bandwidth is the median pairwise distance of
    the pooled sets (median heuristic). Being unbiased, the estimate can be slightly negative when the two
    sets come from one distribution.
    """
    if kernel != "rbf":
        raise ValueError(f"only the 'rbf' kernel is implemented, got {kernel!r}")
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if bandwidth is None:
        pooled = np.concatenate([a, b])
        distances = np.sqrt(_squared_distances(pooled, pooled))[np.triu_indices(len(pooled), k=1)]
        positive = distances[distances > 0]
        bandwidth = float(np.median(positive)) if positive.size else 1.0
    gamma = 1.0 / (2.0 * bandwidth**2)
    k_aa = np.exp(-gamma * _squared_distances(a, a))
    k_bb = np.exp(-gamma * _squared_distances(b, b))
    k_ab = np.exp(-gamma * _squared_distances(a, b))
    n, m = len(a), len(b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())
