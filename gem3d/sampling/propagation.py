"""Batched bi-directional propagation sampling with overlapped inpainting (GEM-3D, "Sampling a volume").

The windows come from `windows.plan_chains`: every window reaches the denoiser in ascending slice order, the
way stage 2 was trained, and inpaints its known frames (leading ones going up, trailing ones going down). All
chains of all requested volumes advance in lockstep: round k denoises, as one batch per window shape, every
window whose dependency level (`windows.dependency_levels`) is k, so a batch of volumes costs `steps` network
calls per round instead of per window; the downward chain runs one round behind the upward one, whose first
window writes the slice it inpaints. Noise is drawn per window from generators seeded by (request seed,
direction, window index), so batching changes the cost, not the volumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from gem3d.config import DiffusionConfig, SamplingConfig
from gem3d.diffusion.schedule import make_sampling_scheduler
from gem3d.sampling.windows import Direction, Window, dependency_levels, plan_chains
from gem3d.seeds import derive_seed


class Denoiser(Protocol):
    """A window denoiser: `(B, L, C, H, W)` noisy frames in, epsilon or v prediction of the same shape out."""

    def __call__(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        mask_condition: torch.Tensor,
        informed_slice: torch.Tensor,
    ) -> torch.Tensor: ...


@dataclass
class SamplerSettings:
    """How to sample: solver, its steps and stochasticity, and the propagation options (overlap, ablations)."""

    sampler: Literal["ddim", "dpm_solver"] = "ddim"
    steps: int = 200
    eta: float = 1.0
    overlap: int = 1
    overlapped_inpainting: bool = True
    directions: Literal["both", "up"] = "both"
    resample: int = 0

    @classmethod
    def from_config(cls, config: SamplingConfig) -> SamplerSettings:
        """The sampler settings of a pipeline configuration."""
        return cls(
            sampler=config.sampler,
            steps=config.steps,
            eta=config.eta,
            overlap=config.overlap,
            overlapped_inpainting=config.overlapped_inpainting,
            directions=config.directions,
            resample=config.resample,
        )


@dataclass
class VolumeRequest:
    """One volume to generate: its mask condition, the informed slice for `start_slice`, and its seed."""

    mask_condition: torch.Tensor  # (Z, Cm, H, W)
    informed_slice: torch.Tensor  # (C, H, W)
    start_slice: int
    seed: int

    @property
    def num_slices(self) -> int:
        return self.mask_condition.shape[0]


@dataclass(frozen=True)
class KnownFrames:
    """Frames of a window already generated, and where they sit in the window (indices along its slice axis)."""

    frames: torch.Tensor  # (n, C, H, W)
    positions: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.positions):
            raise ValueError(f"{len(self.frames)} known frames for {len(self.positions)} positions")


@dataclass(frozen=True)
class _Task:
    request_index: int
    direction: Direction
    window_index: int
    window: Window
    level: int


@torch.inference_mode()
def denoise_windows(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    mask_windows: torch.Tensor,
    informed_slices: torch.Tensor,
    known_frames: Sequence[KnownFrames | None],
    noise_seeds: Sequence[int],
    eta: float = 0.0,
    resample: int = 0,
) -> torch.Tensor:
    """Run one full reverse process for a batch of same-length windows, inpainting each one's known frames.

    `scheduler` must have its timesteps set. `known_frames[b]` (or None) replaces the frames of window b at its
    `positions` at every step, noised to the step's true timestep, and exactly after the last step.
    `resample` > 0 (DDIM only) harmonises windows that have known frames, as RePaint does: each step but the
    last is taken `resample` extra times, noising the result back to the step's timestep in between, so the
    generated frames settle onto the known ones; windows without known frames come out exactly as without it.
    Sampling, inpainting and harmonising noise come from separate generators seeded by `noise_seeds[b]`, so
    neither the batch nor either option changes the other draws.
    """
    if resample and not isinstance(scheduler, DDIMScheduler):
        raise ValueError("resampling needs the DDIM sampler: a multistep solver keeps a history it would corrupt")
    device, dtype = informed_slices.device, informed_slices.dtype
    batch, length = mask_windows.shape[:2]
    frame_shape = (length, *informed_slices.shape[1:])
    sampling = [_generator(device, seed, "sampling") for seed in noise_seeds]
    inpainting = [_generator(device, seed, "inpainting") for seed in noise_seeds]
    harmonising = [_generator(device, seed, "harmonising") for seed in noise_seeds]
    harmonised = torch.tensor([known is not None and bool(known.positions) for known in known_frames], device=device)
    rounds = 1 + resample if bool(harmonised.any()) else 1
    sample = _draw(frame_shape, sampling, device, dtype) * scheduler.init_noise_sigma  # (B, L, C, H, W)
    for index, timestep in enumerate(scheduler.timesteps):
        passes = 1 if index == len(scheduler.timesteps) - 1 else rounds
        for round_index in range(passes):
            extra = round_index < passes - 1
            noisy = _replace_known(sample, known_frames, inpainting, scheduler, timestep)
            prediction = denoiser(
                scheduler.scale_model_input(noisy, timestep),
                torch.full((batch,), int(timestep), dtype=torch.long, device=device),
                mask_windows,
                informed_slices,
            )
            generators = harmonising if extra else sampling
            step_options = {}
            if isinstance(scheduler, DDIMScheduler):
                step_options["eta"] = eta
                if eta > 0:
                    step_options["variance_noise"] = _draw(frame_shape, generators, device, dtype)
            stepped = scheduler.step(prediction, timestep, noisy, **step_options).prev_sample
            if extra:
                renoised = _renoise(stepped, scheduler, timestep, harmonising)
                sample = torch.where(harmonised.reshape(-1, 1, 1, 1, 1), renoised, sample)
            else:
                sample = stepped
    return _replace_known(sample, known_frames, inpainting, scheduler, None)


def _renoise(
    sample: torch.Tensor, scheduler: DDIMScheduler, timestep: torch.Tensor, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """Take a DDIM step's result (at the previous timestep) back to `timestep`: sample q(x_t | x_prev)."""
    previous = int(timestep) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_bar = scheduler.alphas_cumprod[int(timestep)]
    alpha_bar_previous = scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod
    ratio = (alpha_bar / alpha_bar_previous).to(sample.device, sample.dtype)
    noise = _draw(tuple(sample.shape[1:]), generators, sample.device, sample.dtype)  # (B, L, C, H, W)
    return ratio.sqrt() * sample + (1 - ratio).sqrt() * noise


@torch.inference_mode()
def sample_volumes(
    denoiser: Denoiser,
    diffusion_config: DiffusionConfig,
    settings: SamplerSettings,
    requests: Sequence[VolumeRequest],
    window_length: int,
    batch_chains: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Generate one `(Z, C, H, W)` volume in sample space (latent or pixel) per request.

    `batch_chains=False` is the reference procedure (one window at a time): same volumes, more network calls.
    `progress(done, total)` is called after each batch of windows.
    """
    for request in requests:
        _check_request(request)
    volumes = [
        request.informed_slice.new_zeros((request.num_slices, *request.informed_slice.shape)) for request in requests
    ]
    batches = _plan_batches(requests, settings, window_length, batch_chains)
    for done, batch in enumerate(batches, start=1):
        device = requests[batch[0].request_index].informed_slice.device
        scheduler = make_sampling_scheduler(diffusion_config, settings.sampler)
        scheduler.set_timesteps(settings.steps, device=device)
        mask_windows = torch.stack(
            [requests[task.request_index].mask_condition[list(task.window.slices)] for task in batch]
        )  # (B, L, Cm, H, W)
        informed_slices = torch.stack([_informed_slice(task, requests, volumes) for task in batch])  # (B, C, H, W)
        known_frames = [
            KnownFrames(volumes[task.request_index][list(task.window.known_slices)], task.window.known_positions)
            if _inpaints(task, settings)
            else None
            for task in batch
        ]
        noise_seeds = [
            derive_seed(requests[task.request_index].seed, task.direction, task.window_index) for task in batch
        ]
        generated = denoise_windows(
            denoiser,
            scheduler,
            mask_windows,
            informed_slices,
            known_frames,
            noise_seeds,
            settings.eta,
            settings.resample,
        )  # (B, L, C, H, W)
        for task, frames in zip(batch, generated, strict=True):
            window = task.window
            volumes[task.request_index][list(window.written)] = frames[list(window.written_positions)]
        if progress is not None:
            progress(done, len(batches))
    return volumes


def count_network_calls(
    diffusion_config: DiffusionConfig,
    settings: SamplerSettings,
    requests: Sequence[VolumeRequest],
    window_length: int,
    batch_chains: bool = True,
) -> int:
    """Sequential denoiser calls `sample_volumes` makes for these requests (the cost that batching cuts)."""
    scheduler = make_sampling_scheduler(diffusion_config, settings.sampler)
    scheduler.set_timesteps(settings.steps)
    steps = len(scheduler.timesteps)
    batches = _plan_batches(requests, settings, window_length, batch_chains)
    harmonised = sum(any(_inpaints(task, settings) for task in batch) for batch in batches)
    return steps * len(batches) + (steps - 1) * settings.resample * harmonised


def _plan_batches(
    requests: Sequence[VolumeRequest], settings: SamplerSettings, window_length: int, batch_chains: bool
) -> list[list[_Task]]:
    """Batches of windows in a valid order: per dependency level, grouped by shape; or one by one in plan order."""
    tasks = [task for index, request in enumerate(requests) for task in _tasks(index, request, settings, window_length)]
    if not batch_chains:
        return [[task] for task in tasks]
    groups: dict[tuple, list[_Task]] = {}
    for task in sorted(tasks, key=lambda task: task.level):
        groups.setdefault((task.level, *_batch_key(task, requests)), []).append(task)
    return list(groups.values())


def _tasks(index: int, request: VolumeRequest, settings: SamplerSettings, window_length: int) -> list[_Task]:
    """The planned windows of one request, in plan order (every window after those it depends on)."""
    chains = plan_chains(request.num_slices, request.start_slice, window_length, settings.overlap, settings.directions)
    return [
        _Task(index, chain.direction, window_index, window, level)
        for chain, levels in zip(chains, dependency_levels(chains), strict=True)
        for window_index, (window, level) in enumerate(zip(chain.windows, levels, strict=True))
    ]


def _inpaints(task: _Task, settings: SamplerSettings) -> bool:
    """Whether the window overwrites known frames (and so is harmonised when resampling)."""
    return settings.overlapped_inpainting and bool(task.window.known_positions)


def _batch_key(task: _Task, requests: Sequence[VolumeRequest]) -> tuple:
    request = requests[task.request_index]
    return (
        len(task.window.slices),
        tuple(request.mask_condition.shape[1:]),
        tuple(request.informed_slice.shape),
        request.informed_slice.dtype,
        request.informed_slice.device,
    )


def _informed_slice(task: _Task, requests: Sequence[VolumeRequest], volumes: list[torch.Tensor]) -> torch.Tensor:
    """The request's informed slice for a window without a condition slice; the generated condition slice otherwise."""
    if task.window.condition_slice is None:
        return requests[task.request_index].informed_slice
    return volumes[task.request_index][task.window.condition_slice]


def _replace_known(
    sample: torch.Tensor,
    known_frames: Sequence[KnownFrames | None],
    generators: Sequence[torch.Generator],
    scheduler: SchedulerMixin,
    timestep: torch.Tensor | None,
) -> torch.Tensor:
    """Set each window's known frames at their positions: noised to `timestep` (the true one), or exactly when None."""
    sample = sample.clone()  # (B, L, C, H, W)
    for index, known in enumerate(known_frames):
        if known is None or not known.positions:
            continue
        frames, positions = known.frames, list(known.positions)  # (n, C, H, W)
        if timestep is None:
            sample[index, positions] = frames
        else:
            noise = torch.randn(frames.shape, generator=generators[index], device=frames.device, dtype=frames.dtype)
            sample[index, positions] = scheduler.add_noise(frames, noise, timestep.reshape(1))
    return sample


def _draw(
    frame_shape: tuple[int, ...], generators: Sequence[torch.Generator], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise, one window per generator: `(B, *frame_shape)`."""
    return torch.stack(
        [torch.randn(frame_shape, generator=generator, device=device, dtype=dtype) for generator in generators]
    )


def _generator(device: torch.device, seed: int, stream: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, stream))


def _check_request(request: VolumeRequest) -> None:
    mask, informed = request.mask_condition, request.informed_slice
    if mask.ndim != 4 or informed.ndim != 3:
        raise ValueError(
            f"expected mask_condition (Z, Cm, H, W) and informed_slice (C, H, W), "
            f"got {tuple(mask.shape)} and {tuple(informed.shape)}"
        )
    if mask.shape[-2:] != informed.shape[-2:]:
        raise ValueError(f"mask slices {tuple(mask.shape[-2:])} and informed slice {tuple(informed.shape[-2:])} differ")
    if not 0 <= request.start_slice < mask.shape[0]:
        raise ValueError(f"start_slice {request.start_slice} outside [0, {mask.shape[0]})")
