"""Turning a prepared plan into what the sampler takes: encoded mask condition and informed slice."""

from __future__ import annotations

import torch

from gem3d.config import Config
from gem3d.models.conditioning import GEM3DDenoiser, window_condition
from gem3d.sampling.propagation import Denoiser, VolumeRequest
from gem3d.synthesis.models import LoadedModels
from gem3d.synthesis.preparation import PreparedPlan


def window_denoiser(denoiser: GEM3DDenoiser) -> Denoiser:
    """The denoiser as `sample_volumes` calls it; the baseline drops the (placeholder) informed slice."""
    if denoiser.use_informed_slice:
        return denoiser

    def without_informed_slice(noisy, timesteps, mask_condition, informed_slice):
        return denoiser(noisy, timesteps, mask_condition, None)

    return without_informed_slice


def volume_request(item: PreparedPlan, models: LoadedModels, config: Config) -> VolumeRequest:
    codec, device = models.codec, models.device
    size = item.mask.shape[-1] // codec.downsampling
    # mask and outline (Z, H, W) -> (1, Z, Cm, h, w) -> (Z, Cm, h, w)
    mask_condition = window_condition(
        torch.from_numpy(item.mask[None]).to(device),
        torch.from_numpy(item.outline[None]).to(device),
        models.num_classes,
        models.denoiser.anatomy_outline,
        config.autoencoder.mask_conditioning,
        size,
        codec,
    )[0]
    if item.informed is None:
        informed = torch.zeros((models.denoiser.sample_channels, size, size), device=device)
    else:
        # (1, H, W) -> (1, 1, H, W) -> (C, h, w)
        informed = codec.encode(torch.from_numpy(item.informed.image[None]).to(device))[0]
    return VolumeRequest(mask_condition.float(), informed.float(), item.plan.start_slice, item.plan.seed)
