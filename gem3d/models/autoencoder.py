"""The first stage: a diffusers KL autoencoder between slices and latents, or the identity (pixel space).

Both codecs share one interface (`encode`, `decode`, `latent_channels`, `downsampling`), so the pipeline
treats pixel-space and latent diffusion alike. Slices are single-channel `(N, 1, H, W)` in `[-1, 1]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from einops import reduce, repeat
from monai.losses import PerceptualLoss
from monai.networks.nets import PatchDiscriminator
from monai.utils import OptionalImportError
from torch import nn

from gem3d.errors import MissingFileError, UnreadableFileError


class PixelCodec(nn.Module):
    """Identity first stage: diffusion runs directly on slices."""

    latent_channels = 1
    downsampling = 1

    def encode(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(N, 1, H, W) -> the same tensor."""
        return x

    def decode(self, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(N, 1, H, W) -> the same tensor."""
        return z


class LatentCodec(nn.Module):
    """A frozen-in-use AutoencoderKL: posterior-mean latents times `scale_factor`, decoded in chunks.

    Grayscale slices are repeated to the model's input channels; decoded channels are averaged back to one.
    The scale is a buffer (`latent_scale`), so it is saved, hashed and loaded with the weights: a trained
    autoencoder's estimated scale (`gem3d.training.latent_scale`) travels with its bundle.
    """

    def __init__(self, autoencoder: AutoencoderKL, scale_factor: float | None = None) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        scale = autoencoder.config.scaling_factor if scale_factor is None else scale_factor
        self.register_buffer("latent_scale", torch.tensor(float(scale), dtype=torch.float64))
        self.in_channels = autoencoder.config.in_channels
        self.latent_channels = autoencoder.config.latent_channels
        self.downsampling = 2 ** (len(autoencoder.config.block_out_channels) - 1)

    @property
    def scale_factor(self) -> float:
        """The factor latents are multiplied by, so that the diffused samples have about unit variance."""
        return float(self.latent_scale)

    def set_scale_factor(self, value: float) -> None:
        """Replace the latent scale (e.g. by the one estimated from the training latents)."""
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"latent scale factor must be a positive finite number, got {value}")
        self.latent_scale.fill_(value)

    @torch.no_grad()
    def posterior_mean(self, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> unscaled (N, C_lat, H / f, W / f) posterior means, `chunk` slices at a time."""
        latents = []
        for part in x.split(chunk):
            # (n, 1, H, W) -> (n, C_in, H, W)
            part = repeat(part, "n 1 h w -> n c h w", c=self.in_channels)
            latents.append(self.autoencoder.encode(part).latent_dist.mean)
        return torch.cat(latents)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> (N, C_lat, H / f, W / f) scaled latents, `chunk` slices at a time."""
        return self.posterior_mean(x, chunk) * self.latent_scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(N, C_lat, h, w) -> (N, 1, h * f, w * f), `chunk` slices at a time."""
        slices = []
        for part in z.split(chunk):
            decoded = self.autoencoder.decode(part / self.latent_scale).sample
            slices.append(reduce(decoded, "n c h w -> n 1 h w", "mean"))
        return torch.cat(slices)


def build_autoencoder(
    latent_channels: int,
    block_channels: Sequence[int],
    in_channels: int = 1,
    layers_per_block: int = 1,
    scale_factor: float = 1.0,
) -> AutoencoderKL:
    """A fresh KL autoencoder for training on our slices; downsampling `2 ** (len(block_channels) - 1)`.

    `scale_factor` is its latent scale until one is estimated from the training latents (1: unscaled).
    """
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * len(block_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_channels),
        block_out_channels=tuple(block_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=math.gcd(32, *block_channels),
        scaling_factor=scale_factor,
    )


def load_pretrained_autoencoder(path: str | Path, scale_factor: float | None = None) -> LatentCodec:
    """Load a diffusers-format AutoencoderKL folder offline; `scale_factor` None uses the folder's own."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise MissingFileError(path, "no diffusers AutoencoderKL here (config.json missing)")
    try:
        autoencoder = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise UnreadableFileError(path, f"cannot load the autoencoder: {error}") from error
    return LatentCodec(autoencoder, scale_factor)


def autoencoder_loss(
    model: AutoencoderKL, x: torch.Tensor, kl_weight: float, reconstruction: Literal["l1", "mse"] = "l1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss of the first stage on slices (N, 1, H, W): reconstruction + `kl_weight` * KL.

    Weighted as in latent diffusion (per-slice sums of both terms) and divided by the pixels per slice, so
    the loss is on the scale of a per-pixel error. Returns it and the (N, 1, H, W) reconstruction of a
    posterior sample.
    """
    inputs = repeat(x, "n 1 h w -> n c h w", c=model.config.in_channels)
    posterior = model.encode(inputs).latent_dist
    decoded = reduce(model.decode(posterior.sample()).sample, "n c h w -> n 1 h w", "mean")
    if reconstruction == "l1":
        reconstruction_loss = F.l1_loss(decoded, x)
    elif reconstruction == "mse":
        reconstruction_loss = F.mse_loss(decoded, x)
    else:
        raise ValueError(f"unknown reconstruction loss {reconstruction!r}; expected 'l1' or 'mse'")
    kl_per_pixel = posterior.kl().mean() / x[0].numel()
    return reconstruction_loss + kl_weight * kl_per_pixel, decoded


class PerceptualNetworkUnavailable(RuntimeError):
    """The perceptual loss's pretrained network is neither installed nor cached, and cannot be downloaded."""


def build_perceptual_loss(network_type: str) -> PerceptualLoss:
    """MONAI's LPIPS perceptual loss on 2D slices, frozen; its weights come from the torch hub cache or the network.

    Raises PerceptualNetworkUnavailable naming the network and the ways on when the weights cannot be obtained.
    """
    try:
        loss = PerceptualLoss(spatial_dims=2, network_type=network_type)
    except (OptionalImportError, OSError) as error:
        # MONAI's optional-import errors carry a whole traceback: its first line names what is missing
        cause = next(iter(str(error).strip().splitlines()), type(error).__name__)
        raise PerceptualNetworkUnavailable(
            f"cannot load the pretrained {network_type!r} network of the autoencoder's perceptual loss ({cause}). "
            "Set autoencoder.perceptual_weight to 0 to train without it, or install MONAI's lpips extra "
            f"(pip install 'monai[lpips]') and pre-download the {network_type!r} weights into the torch hub cache "
            f"({torch.hub.get_dir()}) on a machine with network access."
        ) from error
    return loss.eval().requires_grad_(False)


def check_discriminator_fits(layers: int, slice_size: int) -> None:
    """Raise ValueError when slices of `slice_size` pixels a side are too small for a `layers`-layer discriminator.

    Its kernel-4 convolutions halve the side `layers` times and then take 2 pixels off: at least 3 * 2**layers.
    """
    smallest = 3 * 2**layers
    if slice_size < smallest:
        raise ValueError(
            f"a patch discriminator with {layers} layers needs slices of at least {smallest} pixels a side, these "
            f"have {slice_size}: lower autoencoder.discriminator_layers"
        )


def build_discriminator(channels: int, layers: int) -> PatchDiscriminator:
    """A 2D patch discriminator for single-channel `(N, 1, H, W)` slices; its last output is `(N, 1, h, w)` logits.

    Instance normalisation (as MONAI's 2D latent-diffusion tutorial): independent of the batch size, which can be
    one slice here, and nothing to synchronise under DDP.
    """
    return PatchDiscriminator(
        spatial_dims=2, channels=channels, in_channels=1, out_channels=1, num_layers_d=layers, norm="INSTANCE"
    )
