"""Metric accumulators fed one volume at a time: per-volume values appended as floats, features as running fits.

Memory stays bounded whatever the number of volumes: a setting keeps its per-volume metric values (floats),
a running mean and covariance of its slice features (Frechet distance) and a uniform sample of at most
`MMD_SAMPLE` feature rows (MMD; exact while fewer slices were seen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gem3d.evaluation.results import SettingSummary, SliceProfile
from gem3d.features import FeatureExtractor
from gem3d.metrics import (
    FeatureMoments,
    FeatureReservoir,
    adjacent_slice_profile,
    diversity,
    frechet_from_moments,
    mmd,
    ms_ssim,
    psnr,
    seam_score,
    ssim,
)
from gem3d.seeds import derive_seed

MMD_SAMPLE = 512
"""Feature rows per set kept for the MMD (its kernel matrices grow with the square of this)."""


def fidelity(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM and MS-SSIM of one regenerated volume against its real counterpart (both in `[-1, 1]`)."""
    return {"psnr": psnr(prediction, truth), "ssim": ssim(prediction, truth), "ms_ssim": ms_ssim(prediction, truth)}


class FeatureStream:
    """Slice features of a stream of volumes: a running Gaussian fit and a bounded uniform sample."""

    def __init__(self, extractor: FeatureExtractor, name: str, seed: int) -> None:
        self.extractor = extractor
        self.moments = FeatureMoments()
        self.sample = FeatureReservoir(MMD_SAMPLE, derive_seed("mmd-sample", seed, name))

    def add(self, volume: np.ndarray) -> None:
        """Add every axial slice of a `(Z, H, W)` volume."""
        features = self.extractor.extract(np.asarray(volume, dtype=np.float32)[:, None])  # (Z, 1, H, W) -> (Z, D)
        self.moments.update(features)
        self.sample.update(features)

    def distance(self, reference: FeatureStream) -> dict[str, float]:
        """Frechet distance (all slices) and MMD (sampled slices) between `reference` and this stream."""
        return {
            "frechet": frechet_from_moments(reference.moments, self.moments),
            "mmd": mmd(reference.sample.sample, self.sample.sample),
        }


@dataclass
class SettingScores:
    """The per-volume metric values of one setting, filled volume by volume."""

    setting: str
    features: FeatureStream | None = None
    values: dict[str, list[float]] = field(
        default_factory=lambda: {
            name: [] for name in ("psnr", "ssim", "ms_ssim", "seam_overlap", "seam_no_overlap", "diversity")
        }
    )

    def add_volume(self, volume: np.ndarray, boundaries: Sequence[int], truth: np.ndarray | None = None) -> None:
        """Seams at the volume's window boundaries, fidelity against `truth` when given, its slice features."""
        if boundaries:
            self.values["seam_overlap"].append(seam_score(volume, boundaries))
        if truth is not None:
            for name, value in fidelity(volume, truth).items():
                self.values[name].append(value)
        if self.features is not None:
            self.features.add(volume)

    def add_ablation(self, volume: np.ndarray, boundaries: Sequence[int]) -> None:
        """Seams of the same case sampled without overlapped inpainting."""
        if boundaries:
            self.values["seam_no_overlap"].append(seam_score(volume, boundaries))

    def add_variants(self, variants: Sequence[np.ndarray]) -> None:
        """Diversity of the variants generated from one source mask (when there are at least two)."""
        if len(variants) > 1:
            self.values["diversity"].append(diversity(variants))

    def summary(self, reference: FeatureStream | None = None) -> SettingSummary:
        """The setting's summary; distribution distances against `reference` when both have features."""
        distance = None
        if reference is not None and self.features is not None:
            distance = self.features.distance(reference)
        return SettingSummary(
            setting=self.setting,
            **{name: list(values) for name, values in self.values.items()},
            frechet=None if distance is None else distance["frechet"],
            mmd=None if distance is None else distance["mmd"],
        )


def slice_profile(title: str, real: np.ndarray, synthetic: np.ndarray, boundaries: Sequence[int]) -> SliceProfile:
    """Adjacent-slice difference profiles of a real volume and a synthetic one made from its mask."""
    return SliceProfile(
        title=title,
        real=adjacent_slice_profile(real).tolist(),
        synthetic=adjacent_slice_profile(synthetic).tolist(),
        boundaries=list(boundaries),
    )
