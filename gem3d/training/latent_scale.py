"""The latent scale of a trained autoencoder: `1 / std` of its training latents, as latent diffusion sets it.

Stable Diffusion's 0.18215 is the scale of its own autoencoder; one trained here has latents of another
spread, and the denoiser's noise schedule assumes samples of about unit variance. So after training, the
posterior-mean latents of a bounded random sample of training slices fix the scale (unless the config does).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from gem3d.data import SliceDataset
from gem3d.models.autoencoder import LatentCodec

LATENT_SCALE_SLICES = 256
"""At most this many training slices (drawn at random) estimate the scale: enough for a stable std."""


@torch.no_grad()
def estimate_latent_scale(
    codec: LatentCodec,
    store: str | Path,
    case_ids: Sequence[str],
    seed: int,
    device: torch.device,
    max_slices: int = LATENT_SCALE_SLICES,
    chunk: int = 16,
) -> float:
    """`1 / std` of the unscaled posterior-mean latents of up to `max_slices` slices of `case_ids`.

    All slices when there are no more than `max_slices`, else `max_slices` drawn at random with `seed`.
    """
    dataset = SliceDataset(store, case_ids, seed)
    if len(dataset) > max_slices:
        dataset = SliceDataset(store, case_ids, seed, samples_per_epoch=max_slices)
    latents = []
    for first in range(0, len(dataset), chunk):
        # chunk x (1, H, W) -> (n, 1, H, W) -> (n, C_lat, h, w)
        slices = torch.stack([dataset[index]["image"] for index in range(first, min(first + chunk, len(dataset)))])
        latents.append(codec.posterior_mean(slices.to(device), chunk).float().flatten().cpu())
    spread = float(torch.cat(latents).std())
    if not spread > 0:
        raise ValueError(f"the autoencoder's training latents have no spread (std {spread}): cannot scale them")
    return 1.0 / spread
