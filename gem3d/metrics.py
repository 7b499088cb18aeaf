"""Fidelity, volumetric consistency, diversity and distribution-distance metrics for `(Z, H, W)` volumes.

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


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (the FID formula).

    `||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 sqrt(C_a C_b))`; when the matrix square root is singular or not
    finite, `eps * I` is added to both covariances; a negligible imaginary part from round-off is dropped.
    """
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    mean_diff = a.mean(axis=0) - b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
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
