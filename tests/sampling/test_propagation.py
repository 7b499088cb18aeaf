"""Batched bi-directional propagation: the same volumes as the one-window-at-a-time reference, fewer calls."""

from __future__ import annotations

import pytest
import torch

from gem3d.config import DiffusionConfig, SamplingConfig
from gem3d.diffusion.schedule import make_sampling_scheduler
from gem3d.sampling.propagation import (
    SamplerSettings,
    VolumeRequest,
    count_network_calls,
    denoise_windows,
    sample_volumes,
)
from gem3d.sampling.windows import plan_chains

DIFFUSION = DiffusionConfig()
WINDOW_LENGTH = 4


class StandInDenoiser:
    """A fixed, untrained function of all its inputs that mixes frames of a window; counts and records calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, torch.Tensor]] = []

    def __call__(self, noisy, timesteps, mask_condition, informed_slice):
        self.calls.append(
            {
                "noisy": noisy.clone(),
                "timesteps": timesteps.clone(),
                "mask": mask_condition.clone(),
                "informed": informed_slice.clone(),
            }
        )
        window_mean = noisy.mean(dim=1, keepdim=True)
        mask_mean = mask_condition.mean(dim=2, keepdim=True)
        drift = 1e-4 * timesteps.float()[:, None, None, None, None]
        return torch.tanh(noisy + 0.3 * window_mean + 0.2 * mask_mean - 0.1 * informed_slice[:, None] + drift)


def make_request(num_slices: int, start_slice: int, seed: int) -> VolumeRequest:
    content = torch.Generator().manual_seed(1000 + num_slices)
    return VolumeRequest(
        mask_condition=torch.rand((num_slices, 3, 4, 4), generator=content) * 2 - 1,
        informed_slice=torch.rand((2, 4, 4), generator=content) * 2 - 1,
        start_slice=start_slice,
        seed=seed,
    )


def run(requests, batch_chains=True, denoiser=None, **overrides):
    settings = SamplerSettings(**{"steps": 4, "eta": 1.0, **overrides})
    denoiser = denoiser or StandInDenoiser()
    return sample_volumes(denoiser, DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains=batch_chains)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_batched_chains_give_the_sequential_volumes(sampler):
    requests = [make_request(9, 4, 0), make_request(5, 0, 1), make_request(3, 2, 2), make_request(12, 11, 3)]
    batched = run(requests, batch_chains=True, sampler=sampler)
    sequential = run(requests, batch_chains=False, sampler=sampler)
    for request, volume, reference in zip(requests, batched, sequential, strict=True):
        assert volume.shape == (request.num_slices, 2, 4, 4)
        assert torch.isfinite(volume).all()
        torch.testing.assert_close(volume, reference, rtol=1e-5, atol=1e-5)


def test_dpm_solver_without_noise_is_reproducible_and_finite():
    request = make_request(10, 3, 0)
    first, second = run([request], sampler="dpm_solver", steps=5)[0], run([request], sampler="dpm_solver", steps=5)[0]
    assert torch.isfinite(first).all() and first.abs().sum() > 0
    assert torch.equal(first, second)


def test_different_seeds_give_different_volumes():
    first, second = run([make_request(9, 4, 0), make_request(9, 4, 1)])
    assert (first - second).flatten(1).abs().amax(dim=1).min() > 1e-3


def test_without_overlapped_inpainting_only_later_windows_change():
    request = make_request(9, 0, 0)
    with_inpainting = run([request])[0]
    without = run([request], overlapped_inpainting=False)[0]
    first_window = plan_chains(9, 0, WINDOW_LENGTH, 1)[0].windows[0].written
    later = [index for index in range(9) if index not in first_window]
    torch.testing.assert_close(with_inpainting[list(first_window)], without[list(first_window)])
    assert (with_inpainting[later] - without[later]).flatten(1).abs().amax(dim=1).min() > 1e-4


def test_windows_see_their_mirrored_masks_and_the_generated_condition_slice():
    request = make_request(9, 5, 0)
    denoiser = StandInDenoiser()
    volume = run([request], batch_chains=False, denoiser=denoiser)[0]
    windows = [window for chain in plan_chains(9, 5, WINDOW_LENGTH, 1) for window in chain.windows]
    assert len(denoiser.calls) == 4 * len(windows)
    for index, window in enumerate(windows):
        call = denoiser.calls[4 * index]
        torch.testing.assert_close(call["mask"][0], request.mask_condition[list(window.slices)])
        expected = request.informed_slice if window.condition_slice is None else volume[window.condition_slice]
        torch.testing.assert_close(call["informed"][0], expected)


def test_network_calls_batched_per_round_sequential_per_window():
    requests = [make_request(13, 2, 0), make_request(6, 5, 1), make_request(4, 0, 2)]
    chains = [plan_chains(r.num_slices, r.start_slice, WINDOW_LENGTH, 1) for r in requests]
    longest = max(len(chain.windows) for plan in chains for chain in plan)
    total = sum(len(chain.windows) for plan in chains for chain in plan)
    settings = SamplerSettings(steps=3)
    for batch_chains, expected in [(True, 3 * longest), (False, 3 * total)]:
        denoiser = StandInDenoiser()
        sample_volumes(denoiser, DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains=batch_chains)
        assert len(denoiser.calls) == expected
        assert count_network_calls(DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains) == expected
    assert longest < total


def test_windows_of_different_lengths_are_batched_separately_and_counted():
    requests = [make_request(9, 4, 0), make_request(3, 1, 1)]
    denoiser = StandInDenoiser()
    progress: list[tuple[int, int]] = []
    settings = SamplerSettings(steps=2)
    sample_volumes(denoiser, DIFFUSION, settings, requests, WINDOW_LENGTH, progress=lambda *done: progress.append(done))
    assert {call["noisy"].shape[1] for call in denoiser.calls} == {3, 4}
    assert len(denoiser.calls) == count_network_calls(DIFFUSION, settings, requests, WINDOW_LENGTH)
    assert progress == [(done, len(denoiser.calls) // 2) for done in range(1, len(denoiser.calls) // 2 + 1)]


def _known_frame_runs(sampler: str, known_value: float):
    scheduler = make_sampling_scheduler(DIFFUSION, sampler)
    scheduler.set_timesteps(6)
    denoiser = StandInDenoiser()
    request = make_request(4, 0, 0)
    known = torch.full((2, 2, 4, 4), known_value)
    output = denoise_windows(
        denoiser, scheduler, request.mask_condition[None], request.informed_slice[None], [known], [7], eta=1.0
    )
    return scheduler, denoiser, known, output


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_inpainting_noises_known_frames_to_the_true_timestep(sampler):
    scheduler, first, known_a, _ = _known_frame_runs(sampler, 0.5)
    _, second, known_b, _ = _known_frame_runs(sampler, -0.25)
    alphas_cumprod = scheduler.alphas_cumprod
    for call_a, call_b, timestep in zip(first.calls, second.calls, scheduler.timesteps, strict=True):
        assert int(call_a["timesteps"][0]) == int(timestep)
        difference = call_a["noisy"][0, :2] - call_b["noisy"][0, :2]
        expected = alphas_cumprod[int(timestep)].sqrt() * (known_a - known_b)
        torch.testing.assert_close(difference, expected, rtol=1e-4, atol=1e-6)


def test_known_frames_are_exact_after_the_last_step():
    _, _, known, output = _known_frame_runs("ddim", 0.5)
    assert torch.equal(output[0, :2], known)
    assert not torch.allclose(output[0, 2:], torch.full_like(output[0, 2:], 0.5))


def test_up_only_generates_the_whole_volume_from_slice_zero():
    volume = run([make_request(10, 6, 0)], directions="up")[0]
    assert torch.isfinite(volume).all()
    assert volume.flatten(1).abs().amax(dim=1).min() > 0


def test_settings_from_config():
    config = SamplingConfig(sampler="dpm_solver", steps=25, eta=0.0, overlap=2, overlapped_inpainting=False)
    assert SamplerSettings.from_config(config) == SamplerSettings("dpm_solver", 25, 0.0, 2, False, "both")
