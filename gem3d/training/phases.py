"""What each stage trains: its phases, and the loss of each kind of network on one batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.data import Dataset

from gem3d.config import Config
from gem3d.data import SliceDataset, WindowDataset
from gem3d.diffusion.schedule import (
    make_training_scheduler,
    min_snr_weights,
    sample_low_noise_weighted_timesteps,
    sample_uniform_timesteps,
)
from gem3d.models.autoencoder import LatentCodec, PixelCodec, autoencoder_loss
from gem3d.models.conditioning import window_condition

TrainingStage = Literal["autoencoder", "stage1", "stage2", "slicegen", "baseline"]


@dataclass(frozen=True)
class Phase:
    """One run of the loop: the network trained, its config section, and how the denoiser is conditioned.

    `volumetric`: pseudo-3D layers inserted, one low-noise-weighted timestep per window, and only the temporal
    parameters trained (unless `train_all_parameters`).
    """

    settings: TrainingStage
    network: Literal["autoencoder", "denoiser", "slicegen"]
    use_informed_slice: bool = True
    volumetric: bool = False


STAGES: dict[str, tuple[Phase, ...]] = {
    "autoencoder": (Phase("autoencoder", "autoencoder"),),
    "stage1": (Phase("stage1", "denoiser"),),
    "stage2": (Phase("stage2", "denoiser", volumetric=True),),
    "slicegen": (Phase("slicegen", "slicegen"),),
    "baseline": (
        Phase("baseline", "denoiser", use_informed_slice=False),
        Phase("stage2", "denoiser", use_informed_slice=False, volumetric=True),
    ),
}


@dataclass
class LossContext:
    """What a loss needs besides the network: the phase, the frozen first stage and the noise schedule."""

    config: Config
    phase: Phase
    num_classes: int
    codec: PixelCodec | LatentCodec
    device: torch.device

    def __post_init__(self) -> None:
        self.scheduler = make_training_scheduler(self.config.diffusion)

    def encode(self, slices: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) pixel slices -> (N, C, h, w) diffusion samples in float32 (also under autocast)."""
        return self.codec.encode(slices).float()

    def condition(self, label: torch.Tensor, outline: torch.Tensor | None, size: int) -> torch.Tensor:
        """Mask condition (B, L, Cm, size, size) of label and outline windows (B, L, H, W)."""
        outline = None if outline is None else outline.to(label.device)
        return window_condition(
            label,
            outline,
            self.num_classes,
            self.config.denoiser.anatomy_outline,
            self.config.autoencoder.mask_conditioning,
            size,
            self.codec,
        )

    def noised(self, clean: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward process on (N, C, h, w) samples with (N,) timesteps: the noisy input and the target."""
        noise = torch.randn_like(clean)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        if self.config.diffusion.prediction_type == "epsilon":
            return noisy, noise
        return noisy, self.scheduler.get_velocity(clean, noise, timesteps)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Mean squared error of (N, ...) predictions, each sample weighted for its (N,) timestep (Min-SNR)."""
        diffusion = self.config.diffusion
        weights = min_snr_weights(
            self.scheduler.alphas_cumprod, timesteps, diffusion.prediction_type, diffusion.min_snr_gamma
        )
        per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (N,)
        return (weights * per_sample).mean()


def window_loss(context: LossContext, forward: Callable, batch: dict) -> torch.Tensor:
    """Denoising loss on windows: per-slice timesteps (stage 1) or one per window (volumetric tuning)."""
    device, phase, steps = context.device, context.phase, context.config.diffusion.num_train_timesteps
    label = batch["label"].to(device)  # (B, L, H, W)
    batch_size, length = label.shape[:2]
    # (B, L, 1, H, W) -> (B*L, C, h, w)
    latents = context.encode(rearrange(batch["image"].to(device), "b l c h w -> (b l) c h w"))
    mask_condition = context.condition(label, batch.get("outline"), latents.shape[-1])  # (B, L, Cm, h, w)
    informed = context.encode(batch["informed_slice"].to(device)) if phase.use_informed_slice else None
    if phase.volumetric:
        timesteps = sample_low_noise_weighted_timesteps(batch_size, steps).to(device)  # (B,)
        per_slice = repeat(timesteps, "b -> (b l)", l=length)
    else:
        timesteps = sample_uniform_timesteps((batch_size, length), steps).to(device)  # (B, L)
        per_slice = rearrange(timesteps, "b l -> (b l)")
    noisy, target = context.noised(latents, per_slice)
    # (B*L, C, h, w) -> (B, L, C, h, w)
    noisy = rearrange(noisy, "(b l) c h w -> b l c h w", b=batch_size)
    prediction = forward(noisy, timesteps, mask_condition, informed)  # (B, L, C, h, w)
    return context.loss(rearrange(prediction, "b l c h w -> (b l) c h w"), target, per_slice)


def slice_loss(context: LossContext, forward: Callable, batch: dict) -> torch.Tensor:
    """Denoising loss of the slice model on single slices conditioned on their relative position."""
    latents = context.encode(batch["image"].to(context.device))  # (B, C, h, w)
    timesteps = sample_uniform_timesteps((latents.shape[0],), context.config.diffusion.num_train_timesteps)
    timesteps = timesteps.to(context.device)
    noisy, target = context.noised(latents, timesteps)
    prediction = forward(noisy, timesteps, batch["position"].to(context.device))
    return context.loss(prediction, target, timesteps)


def autoencoder_objective_loss(context: LossContext, forward: Callable, batch: dict) -> torch.Tensor:
    """Reconstruction + KL (+ perceptual) loss of the first stage on single slices.

    The adversarial term is added by the engine, which owns the discriminator (`engine.Adversary`).
    """
    return forward(batch["image"].to(context.device))[0]


class AutoencoderObjective(nn.Module):
    """The autoencoder loss as a module's forward, so that DistributedDataParallel synchronises its gradients.

    Reconstruction + `kl_weight` * KL, plus `perceptual_weight` * a frozen perceptual loss when one is given.
    """

    def __init__(
        self,
        codec: LatentCodec,
        kl_weight: float,
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.codec = codec
        self.kl_weight = kl_weight
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight

    def forward(self, slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, H, W) slices -> the loss and the (N, 1, H, W) reconstruction of a posterior sample."""
        loss, reconstruction = autoencoder_loss(self.codec.autoencoder, slices, self.kl_weight)
        if self.perceptual is not None:
            loss = loss + self.perceptual_weight * self.perceptual(reconstruction.float(), slices.float())
        return loss, reconstruction


LOSSES = {"denoiser": window_loss, "slicegen": slice_loss, "autoencoder": autoencoder_objective_loss}


def slices_per_sample(phase: Phase, config: Config) -> int:
    """Slices in one dataset item of the phase (for throughput): the window length, or 1."""
    return config.data.window_length if phase.network == "denoiser" else 1


def make_dataset(
    phase: Phase, store: Path, case_ids: list[str], config: Config, seed: int, samples: int | None
) -> Dataset:
    """Windows for the denoiser, single slices for the slice model and the autoencoder."""
    if phase.network == "denoiser":
        return WindowDataset(store, case_ids, config.data.window_length, seed, samples)
    return SliceDataset(store, case_ids, seed, samples)
