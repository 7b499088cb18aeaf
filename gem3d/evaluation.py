"""Evaluation of synthetic volumes against real ones: the numbers behind the report, on plain arrays.

Fidelity compares a test case regenerated from its own mask and informed slice with the truth; volumetric
consistency uses the window boundaries the sampler actually had; diversity compares variants of one mask;
distribution distance uses features of a network trained here on the real training slices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from gem3d.features import FeatureExtractor, slice_targets, train_feature_extractor, volume_slices
from gem3d.metrics import adjacent_slice_profile, diversity, frechet_distance, mmd, ms_ssim, psnr, seam_score, ssim
from gem3d.report import SettingSummary, SliceProfile
from gem3d.sampling.windows import plan_chains


def window_boundaries(
    num_slices: int, start_slice: int, window_length: int, overlap: int, directions: str = "both"
) -> list[int]:
    """Slices `b` where slice `b - 1` and `b` were written by different windows (where seams could appear)."""
    owner = np.full(num_slices, -1)
    window_number = 0
    for chain in plan_chains(num_slices, start_slice, window_length, overlap, directions):
        for window in chain.windows:
            owner[list(window.written)] = window_number
            window_number += 1
    return [index for index in range(1, num_slices) if owner[index] != owner[index - 1]]


def fidelity(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM and MS-SSIM of one regenerated volume against its real counterpart (both in `[-1, 1]`)."""
    return {"psnr": psnr(prediction, truth), "ssim": ssim(prediction, truth), "ms_ssim": ms_ssim(prediction, truth)}


def feature_extractor_for(
    real_volumes: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int, seed: int, steps: int
) -> FeatureExtractor:
    """Train the distribution-distance feature network on real training slices (label presence + position)."""
    slices = volume_slices([image for image, _ in real_volumes])
    targets = np.concatenate([slice_targets(label, num_classes) for _, label in real_volumes])
    note = f"{len(real_volumes)} real training volumes ({len(slices)} axial slices)"
    return train_feature_extractor(slices, targets, seed=seed, steps=steps, data_note=note)


def distribution_distance(
    extractor: FeatureExtractor, real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray]
) -> dict[str, float]:
    """Frechet distance and MMD between real and synthetic slices in the extractor's feature space."""
    real_features = extractor.extract(volume_slices(list(real)))
    synthetic_features = extractor.extract(volume_slices(list(synthetic)))
    return {
        "frechet": frechet_distance(real_features, synthetic_features),
        "mmd": mmd(real_features, synthetic_features),
    }


def summarise_setting(
    setting: str,
    volumes: Sequence[np.ndarray],
    sources: Sequence[str],
    boundaries: Sequence[Sequence[int]],
    distance: dict[str, float] | None = None,
    truths: Sequence[np.ndarray] | None = None,
    boundaries_without_overlap: Sequence[tuple[np.ndarray, Sequence[int]]] = (),
) -> SettingSummary:
    """Per-volume metrics of one setting: fidelity (when truths are given), seams, diversity per source mask."""
    scores = [fidelity(volume, truth) for volume, truth in zip(volumes, truths or [], strict=False)]
    by_source: dict[str, list[np.ndarray]] = defaultdict(list)
    for volume, source in zip(volumes, sources, strict=True):
        by_source[source].append(volume)
    return SettingSummary(
        setting=setting,
        psnr=[s["psnr"] for s in scores],
        ssim=[s["ssim"] for s in scores],
        ms_ssim=[s["ms_ssim"] for s in scores],
        seam_overlap=[seam_score(v, b) for v, b in zip(volumes, boundaries, strict=True) if b],
        seam_no_overlap=[seam_score(v, b) for v, b in boundaries_without_overlap if b],
        diversity=[diversity(group) for group in by_source.values() if len(group) > 1],
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
