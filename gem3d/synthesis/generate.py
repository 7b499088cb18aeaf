"""The batch loop: prepared plans sampled together in shared batches, decoded, returned with lineage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gem3d.config import Config
from gem3d.determinism import deterministic_kernels
from gem3d.errors import InvalidEditError
from gem3d.lineage import LineageRecord
from gem3d.preprocess import denormalise_intensity
from gem3d.sampling.propagation import SamplerSettings, sample_volumes
from gem3d.synthesis.label_means import match_label_means
from gem3d.synthesis.models import LoadedModels
from gem3d.synthesis.plans import SynthesisPlan
from gem3d.synthesis.preparation import PreparedPlan, check_models, generate_informed, prepare_all
from gem3d.synthesis.records import lineage_record
from gem3d.synthesis.requests import volume_request, window_denoiser


@dataclass
class SyntheticVolume:
    """A generated volume in `[-1, 1]`, the mask it was generated from, and its lineage record."""

    plan: SynthesisPlan
    image: np.ndarray  # (Z, H, W) float32
    mask: np.ndarray  # (Z, H, W) uint8
    lineage: LineageRecord
    unclamped_range: tuple[float, float] | None = None
    """Min and max of the decoded volume before clipping to `[-1, 1]` (None when not made by `synthesize`)."""
    clamped_fraction: float | None = None
    """Fraction of voxels outside `[-1, 1]` before clipping: a sampler gone wrong shows here, not after the clip."""
    outline: np.ndarray | None = None
    """(Z, H, W) uint8 0/1: the mask case's anatomy outline, edited with the mask (None: not made by `synthesize`)."""


def to_original_units(image: np.ndarray, normalisation: dict) -> np.ndarray:
    """A `[-1, 1]` volume back in the units of the case whose normalisation is given (e.g. its source case)."""
    return denormalise_intensity(image, normalisation)


@torch.inference_mode()
def synthesize(
    plans: Sequence[SynthesisPlan],
    store: str | Path,
    models: LoadedModels,
    config: Config,
    on_invalid: Callable[[SynthesisPlan, InvalidEditError], None] | None = None,
    batch_chains: bool = True,
) -> list[SyntheticVolume]:
    """Generate the planned volumes, `config.sampling.volumes_per_batch` at a time in shared batches.

    Every plan is first checked against the loaded checkpoints. An invalid edited mask raises
    `InvalidEditError` naming the plan, or, with `on_invalid`, is reported there and skipped (the caller
    quarantines it). Volumes do not depend on which plans share their batch. Lineage records leave
    `flow_run_id` to the caller.
    """
    for plan in plans:
        check_models(plan, models)
    with deterministic_kernels(config.runtime.deterministic):
        settings = SamplerSettings.from_config(config.sampling)
        denoiser = window_denoiser(models.denoiser)
        step = config.sampling.volumes_per_batch
        volumes = []
        for first in range(0, len(plans), step):
            batch = prepare_all(plans[first : first + step], store, models, on_invalid)
            generate_informed(batch, models, config)
            requests = [volume_request(item, models, config) for item in batch]
            samples = sample_volumes(
                denoiser, config.diffusion, settings, requests, config.data.window_length, batch_chains=batch_chains
            )
            for item, sample in zip(batch, samples, strict=True):
                # (Z, C, h, w) -> (Z, 1, H, W) -> (Z, H, W)
                decoded = models.codec.decode(sample, chunk=config.sampling.decode_chunk)[:, 0].float().cpu().numpy()
                decoded = _matched(decoded, item, config)
                volumes.append(
                    SyntheticVolume(
                        item.plan,
                        np.clip(decoded, -1, 1),
                        item.mask,
                        lineage_record(item, models, config),
                        unclamped_range=(float(decoded.min()), float(decoded.max())),
                        clamped_fraction=float((np.abs(decoded) > 1).mean()),
                        outline=item.outline,
                    )
                )
        return volumes


def _matched(decoded: np.ndarray, item: PreparedPlan, config: Config) -> np.ndarray:
    """The decoded `(Z, H, W)` volume, its label means moved to the real informed slice's when the config asks."""
    informed = item.informed
    if not config.sampling.match_label_means or informed is None or informed.label is None:
        return decoded
    return match_label_means(decoded, item.mask, informed.image[0], informed.label)
