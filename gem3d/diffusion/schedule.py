"""Noise schedules from diffusers (not re-derived here) and the training timestep samplers of GEM-3D."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from gem3d.config import DiffusionConfig


def _schedule_kwargs(config: DiffusionConfig) -> dict:
    return {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "beta_schedule": config.beta_schedule,
        "prediction_type": config.prediction_type,
    }


def make_training_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The forward process used in training: `add_noise` and `get_velocity`."""
    return DDPMScheduler(**_schedule_kwargs(config), clip_sample=False)


def make_sampling_scheduler(config: DiffusionConfig, sampler: str) -> SchedulerMixin:
    """A reverse-process solver with the same betas: "ddim" (the paper's) or "dpm_solver" (faster)."""
    if sampler == "ddim":
        return DDIMScheduler(**_schedule_kwargs(config), clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if sampler == "dpm_solver":
        return DPMSolverMultistepScheduler(**_schedule_kwargs(config), algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler {sampler!r}; expected 'ddim' or 'dpm_solver'")


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, prediction_type: str, gamma: float | None
) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma for `timesteps`: ones without gamma.

    With SNR = abar / (1 - abar), an epsilon target is weighted by min(SNR, gamma) / SNR and a velocity target by
    min(SNR, gamma) / (SNR + 1): both equal an x0 loss clamped at gamma, so the easy low-noise steps stop dominating.
    """
    if gamma is None:
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    abar = alphas_cumprod.to(timesteps.device)[timesteps].double()
    snr = abar / (1 - abar)
    clamped = snr.clamp(max=gamma)
    weights = clamped / snr if prediction_type == "epsilon" else clamped / (snr + 1)
    return weights.float()


def sample_uniform_timesteps(
    shape: tuple[int, ...], num_train_timesteps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Stage 1: an independent timestep for every slice, uniform over `[0, T)`."""
    return torch.randint(0, num_train_timesteps, shape, generator=generator)


def sample_low_noise_weighted_timesteps(
    batch_size: int, num_train_timesteps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Stage 2: one timestep per window, drawn with weight proportional to `2T - t` (the paper's)."""
    steps = torch.arange(num_train_timesteps, dtype=torch.float64)
    weights = 2 * num_train_timesteps - steps
    return torch.multinomial(weights, batch_size, replacement=True, generator=generator)
