"""Batched bi-directional propagation: windows reach the denoiser ascending; batching changes calls, not volumes."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from gem3d.config import DiffusionConfig, SamplingConfig
from gem3d.diffusion.schedule import make_sampling_scheduler
from gem3d.sampling.propagation import (
    KnownFrames,
    SamplerSettings,
    VolumeRequest,
    count_network_calls,
    denoise_windows,
    sample_volumes,
)
from gem3d.sampling.windows import plan_chains
from gem3d.seeds import derive_seed

DIFFUSION = DiffusionConfig()
WINDOW_LENGTH = 4


class StandInDenoiser:
    """A fixed, untrained function of all its inputs, sensitive to frame order; counts and records calls.

    Frame k is mixed with the running mean of frames 0..k (direction-aware, like the slice layers of stage 2: a
    window presented in reverse gives a different result) and with the window mean (so every frame sees all).
    """

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
        positions = torch.arange(1, noisy.shape[1] + 1, dtype=noisy.dtype).reshape(1, -1, 1, 1, 1)
        running_mean = noisy.cumsum(dim=1) / positions  # (B, L, C, H, W): frame k sees frames 0..k
        window_mean = noisy.mean(dim=1, keepdim=True)
        mask_mean = mask_condition[:, :, 1:].mean(dim=2, keepdim=True)
        slice_term = 0.01 * mask_condition[:, :, :1]
        drift = 1e-4 * timesteps.float()[:, None, None, None, None]
        return torch.tanh(
            noisy
            + 0.3 * running_mean
            + 0.2 * window_mean
            + 0.2 * mask_mean
            + slice_term
            - 0.1 * informed_slice[:, None]
            + drift
        )


def make_request(num_slices: int, start_slice: int, seed: int) -> VolumeRequest:
    """A request whose mask condition's channel 0 is the slice index, so calls show which slices they got."""
    content = torch.Generator().manual_seed(1000 + num_slices)
    mask = torch.rand((num_slices, 3, 4, 4), generator=content) * 2 - 1
    mask[:, 0] = torch.arange(num_slices, dtype=mask.dtype).reshape(-1, 1, 1)
    return VolumeRequest(
        mask_condition=mask,
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


def test_without_overlapped_inpainting_known_frames_are_generated_freely_but_not_rewritten():
    request = make_request(9, 4, 0)
    with_inpainting = run([request])[0]
    without = run([request], overlapped_inpainting=False)[0]
    first_window = plan_chains(9, 4, WINDOW_LENGTH, 1)[0].windows[0].written
    later = [index for index in range(9) if index not in first_window]
    torch.testing.assert_close(with_inpainting[list(first_window)], without[list(first_window)])
    assert (with_inpainting[later] - without[later]).flatten(1).abs().amax(dim=1).min() > 1e-4


def test_stand_in_denoiser_tells_a_reversed_window_apart():
    request = make_request(4, 0, 0)
    noisy = torch.randn((1, 4, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([500])
    forward = StandInDenoiser()(noisy, timesteps, request.mask_condition[None], request.informed_slice[None])
    reverse = StandInDenoiser()(
        noisy.flip(1), timesteps, request.mask_condition[None].flip(1), request.informed_slice[None]
    )
    assert (forward - reverse.flip(1)).abs().amax() > 1e-2


def test_every_window_reaches_the_network_in_ascending_slice_order():
    requests = [make_request(13, 6, 0), make_request(9, 8, 1), make_request(5, 2, 2), make_request(11, 10, 3)]
    denoiser = StandInDenoiser()
    run(requests, denoiser=denoiser)
    received = Counter(
        tuple(int(index) for index in row[:, 0, 0, 0]) for call in denoiser.calls for row in call["mask"]
    )  # slice indices of each window row, from the mask channel that carries them
    planned = Counter(
        window.slices
        for request in requests
        for chain in plan_chains(request.num_slices, request.start_slice, WINDOW_LENGTH, 1)
        for window in chain.windows
    )
    assert all(list(window) == sorted(window) for window in received)
    assert received == Counter({window: 4 * count for window, count in planned.items()})


def _replay(request: VolumeRequest, volume: torch.Tensor, direction: str, window_index: int, window, reverse=False):
    """One window denoised on its own from the finished volume: its masks, known frames and condition slice."""
    scheduler = make_sampling_scheduler(DIFFUSION, "ddim")
    scheduler.set_timesteps(4)
    order = list(window.slices)[::-1] if reverse else list(window.slices)
    positions = [order.index(slice_index) for slice_index in window.known_slices]
    known = KnownFrames(volume[list(window.known_slices)], tuple(positions)) if positions else None
    informed = request.informed_slice if window.condition_slice is None else volume[window.condition_slice]
    seed = derive_seed(request.seed, direction, window_index)
    output = denoise_windows(
        StandInDenoiser(), scheduler, request.mask_condition[order][None], informed[None], [known], [seed], eta=1.0
    )[0]  # (L, C, H, W) in the order given
    return output[[order.index(slice_index) for slice_index in window.slices]]  # back to ascending order


def test_each_window_is_its_ascending_replay_and_down_windows_pin_their_trailing_frames():
    request = make_request(11, 6, 3)
    volume = run([request])[0]
    down_windows = 0
    for chain in plan_chains(11, 6, WINDOW_LENGTH, 1):
        for window_index, window in enumerate(chain.windows):
            replay = _replay(request, volume, chain.direction, window_index, window)
            written, known = list(window.written_positions), list(window.known_positions)
            torch.testing.assert_close(replay[written], volume[list(window.written)], rtol=1e-5, atol=1e-6)
            assert torch.equal(replay[known], volume[list(window.known_slices)])
            if chain.direction == "down":
                down_windows += 1
                assert known == list(range(WINDOW_LENGTH - len(known), WINDOW_LENGTH)) and known
                reversed_replay = _replay(request, volume, "down", window_index, window, reverse=True)
                assert (reversed_replay[written] - volume[list(window.written)]).abs().amax() > 1e-3
    assert down_windows == 2


def test_first_down_window_inpaints_the_start_slice_one_round_after_the_first_up_window():
    request = make_request(11, 6, 3)
    denoiser = StandInDenoiser()
    run([request], denoiser=denoiser)
    rounds = [call["mask"][:, :, 0, 0, 0].tolist() for call in denoiser.calls[::4]]  # slice indices per row
    assert rounds == [[[6, 7, 8, 9]], [[7, 8, 9, 10], [3, 4, 5, 6]], [[0, 1, 2, 3]]]


def test_windows_see_their_masks_and_the_generated_condition_slice():
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


def test_network_calls_batched_per_dependency_round_sequential_per_window():
    requests = [make_request(13, 2, 0), make_request(6, 5, 1), make_request(4, 0, 2)]
    chains = [plan_chains(r.num_slices, r.start_slice, WINDOW_LENGTH, 1) for r in requests]
    lengths = [{chain.direction: len(chain.windows) for chain in plan} for plan in chains]
    rounds = max(max(length["up"], 1 + length.get("down", 0)) for length in lengths)
    total = sum(sum(length.values()) for length in lengths)
    settings = SamplerSettings(steps=3)
    for batch_chains, expected in [(True, 3 * rounds), (False, 3 * total)]:
        denoiser = StandInDenoiser()
        sample_volumes(denoiser, DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains=batch_chains)
        assert len(denoiser.calls) == expected
        assert count_network_calls(DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains) == expected
    assert rounds < total


def test_windows_of_different_lengths_are_batched_separately_and_counted():
    requests = [make_request(9, 4, 0), make_request(3, 1, 1)]
    denoiser = StandInDenoiser()
    progress: list[tuple[int, int]] = []
    settings = SamplerSettings(steps=2)
    sample_volumes(denoiser, DIFFUSION, settings, requests, WINDOW_LENGTH, progress=lambda *done: progress.append(done))
    assert {call["noisy"].shape[1] for call in denoiser.calls} == {3, 4}
    assert len(denoiser.calls) == count_network_calls(DIFFUSION, settings, requests, WINDOW_LENGTH)
    assert progress == [(done, len(denoiser.calls) // 2) for done in range(1, len(denoiser.calls) // 2 + 1)]


KNOWN_POSITIONS = [(0, 1), (2, 3), (1, 3)]  # leading (up chain), trailing (down chain), any


def _known_frame_runs(sampler: str, known_value: float, positions: tuple[int, ...]):
    scheduler = make_sampling_scheduler(DIFFUSION, sampler)
    scheduler.set_timesteps(6)
    denoiser = StandInDenoiser()
    request = make_request(4, 0, 0)
    known = torch.full((len(positions), 2, 4, 4), known_value)
    output = denoise_windows(
        denoiser,
        scheduler,
        request.mask_condition[None],
        request.informed_slice[None],
        [KnownFrames(known, positions)],
        [7],
        eta=1.0,
    )
    return scheduler, denoiser, known, output


@pytest.mark.parametrize("positions", KNOWN_POSITIONS)
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_inpainting_noises_known_frames_to_the_true_timestep(sampler, positions):
    scheduler, first, known_a, _ = _known_frame_runs(sampler, 0.5, positions)
    _, second, known_b, _ = _known_frame_runs(sampler, -0.25, positions)
    alphas_cumprod = scheduler.alphas_cumprod
    for call_a, call_b, timestep in zip(first.calls, second.calls, scheduler.timesteps, strict=True):
        assert int(call_a["timesteps"][0]) == int(timestep)
        difference = call_a["noisy"][0, list(positions)] - call_b["noisy"][0, list(positions)]
        expected = alphas_cumprod[int(timestep)].sqrt() * (known_a - known_b)
        torch.testing.assert_close(difference, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("positions", KNOWN_POSITIONS)
def test_known_frames_are_exact_after_the_last_step(positions):
    _, _, known, output = _known_frame_runs("ddim", 0.5, positions)
    free = [position for position in range(4) if position not in positions]
    assert torch.equal(output[0, list(positions)], known)
    assert not torch.allclose(output[0, free], torch.full_like(output[0, free], 0.5))


def test_known_frames_must_match_their_positions():
    with pytest.raises(ValueError, match="positions"):
        KnownFrames(torch.zeros((2, 2, 4, 4)), (3,))


def test_up_only_generates_the_whole_volume_from_slice_zero():
    volume = run([make_request(10, 6, 0)], directions="up")[0]
    assert torch.isfinite(volume).all()
    assert volume.flatten(1).abs().amax(dim=1).min() > 0


def test_settings_from_config():
    config = SamplingConfig(sampler="dpm_solver", steps=25, eta=0.0, overlap=2, overlapped_inpainting=False)
    assert SamplerSettings.from_config(config) == SamplerSettings("dpm_solver", 25, 0.0, 2, False, "both")
