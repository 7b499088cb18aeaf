"""GEM-3D conditioning: the mask and informed slice concatenated to the noisy window; the slice generator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from gem3d.anatomy import condition_classes, outlined_label
from gem3d.models.unet import SliceUNet, timestep_embedding

if TYPE_CHECKING:  # the codecs need diffusers; the denoiser itself needs only torch
    from gem3d.models.autoencoder import LatentCodec, PixelCodec


def mask_to_condition(
    label: torch.Tensor,
    num_classes: int,
    mode: Literal["onehot", "encoder"],
    size: int,
    autoencoder: PixelCodec | LatentCodec | None = None,
) -> torch.Tensor:
    """Label window (B, L, H, W) with classes 0..num_classes -> mask condition (B, L, Cm, size, size).

    "onehot": one channel per foreground class 1..num_classes, area-downsampled to `size` (the fraction of
    each latent pixel covered by the class). "encoder" (the paper's): `label / num_classes * 2 - 1` encoded
    by the first stage, Cm = its latent channels.
    """
    if label.min() < 0 or label.max() > num_classes:
        low, high = int(label.min()), int(label.max())
        raise ValueError(f"labels must lie in [0, {num_classes}], got [{low}, {high}]")
    batch = label.shape[0]
    # (B, L, H, W) -> (B*L, H, W)
    flat = rearrange(label.long(), "b l h w -> (b l) h w")
    if mode == "onehot":
        # (B*L, H, W) -> (B*L, K, H, W), background dropped
        onehot = rearrange(F.one_hot(flat, num_classes + 1)[..., 1:], "n h w k -> n k h w").float()
        condition = F.interpolate(onehot, size=(size, size), mode="area")
    elif mode == "encoder":
        if autoencoder is None:
            raise ValueError("mask conditioning mode 'encoder' needs the autoencoder")
        scaled = flat[:, None].float() / num_classes * 2 - 1
        condition = autoencoder.encode(scaled)
        if condition.shape[-2:] != (size, size):
            raise ValueError(f"encoded mask is {tuple(condition.shape[-2:])}, expected {size}x{size}")
    else:
        raise ValueError(f"unknown mask conditioning mode {mode!r}; expected 'onehot' or 'encoder'")
    # (B*L, Cm, size, size) -> (B, L, Cm, size, size)
    return rearrange(condition, "(b l) c h w -> b l c h w", b=batch)


def window_condition(
    label: torch.Tensor,
    outline: torch.Tensor | None,
    num_classes: int,
    with_outline: bool,
    mode: Literal["onehot", "encoder"],
    size: int,
    autoencoder: PixelCodec | LatentCodec | None = None,
) -> torch.Tensor:
    """The denoiser's mask condition (B, L, Cm, size, size) of label windows (B, L, H, W), with the anatomy
    outline (B, L, H, W) as one more class when `with_outline` (`gem3d.anatomy.outlined_label`)."""
    if with_outline:
        if outline is None:
            raise ValueError("this denoiser is conditioned on the anatomy outline; none was given")
        label = outlined_label(label, outline, num_classes)
    return mask_to_condition(label, condition_classes(num_classes, with_outline), mode, size, autoencoder)


class GEM3DDenoiser(nn.Module):
    """The GEM-3D denoiser: a SliceUNet on [noisy window, mask condition, informed slice] channels.

    With `use_informed_slice=False` it is the baseline (a modified Make-A-Volume) without informed channels.
    With `anatomy_outline`, its mask condition is `gem3d.anatomy.outlined_label` (labels plus the body outline).
    """

    def __init__(
        self,
        sample_channels: int,
        mask_channels: int,
        use_informed_slice: bool,
        anatomy_outline: bool = False,
        **unet_kwargs,
    ) -> None:
        super().__init__()
        self.sample_channels = sample_channels
        self.mask_channels = mask_channels
        self.use_informed_slice = use_informed_slice
        self.anatomy_outline = anatomy_outline
        informed_channels = sample_channels if use_informed_slice else 0
        self.unet = SliceUNet(
            in_channels=sample_channels + mask_channels + informed_channels,
            out_channels=sample_channels,
            **unet_kwargs,
        )

    def enable_volumetric_tuning(self, temporal_attention: bool = True) -> None:
        """Stage 2: insert the identity-initialised pseudo-3D layers into the UNet."""
        self.unet.enable_volumetric_tuning(temporal_attention)

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The pseudo-3D parameters trained in stage 2."""
        return self.unet.temporal_parameters()

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        mask_condition: torch.Tensor,
        informed_slice: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict eps (or v) for the window: (B, L, C, H, W).

        noisy (B, L, C, H, W), timesteps (B, L) or (B,), mask_condition (B, L, Cm, H, W), informed_slice
        (B, C, H, W) in the same space as `noisy`.
        """
        parts = [noisy, mask_condition]
        if self.use_informed_slice:
            if informed_slice is None:
                raise ValueError("this denoiser is conditioned on an informed slice; none was given")
            # (B, C, H, W) -> (B, L, C, H, W): the same informed slice conditions every frame
            parts.append(repeat(informed_slice, "b c h w -> b l c h w", l=noisy.shape[1]))
        elif informed_slice is not None:
            raise ValueError("this denoiser (baseline) takes no informed slice")
        return self.unet(torch.cat(parts, dim=2), timesteps)


class SliceGenerator(nn.Module):
    """Position-conditioned 2D slice diffusion model that generates informed slices ("ig" settings).

    The relative slice position `z / Z` is scaled by 1000, embedded sinusoidally and passed through the
    UNet's extra-embedding MLP, added to the time embedding: a simplification of the paper's cross-attention
    on the same embedding (one conditioning vector needs no attention to be read).
    """

    def __init__(self, channels: int, model_channels: int = 32, **unet_kwargs) -> None:
        super().__init__()
        self.channels = channels
        self.position_dim = model_channels
        self.unet = SliceUNet(
            in_channels=channels,
            out_channels=channels,
            model_channels=model_channels,
            extra_embedding_dim=model_channels,
            **unet_kwargs,
        )

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """noisy (B, C, H, W), timesteps (B,), position (B,) in [0, 1] -> (B, C, H, W)."""
        # (B,) -> (B, 1, E)
        position_embedding = timestep_embedding(position * 1000, self.position_dim)[:, None]
        # (B, C, H, W) -> (B, 1, C, H, W) -> (B, C, H, W)
        return self.unet(noisy[:, None], timesteps, position_embedding)[:, 0]
