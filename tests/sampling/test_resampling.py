"""RePaint-style resampling of windows with known frames: it harmonises them and changes nothing else."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from gem3d.config import DiffusionConfig, SamplingConfig
from gem3d.diffusion.schedule import make_sampling_scheduler
from gem3d.sampling.propagation import (
    KnownFrames,
    SamplerSettings,
    count_network_calls,
    denoise_windows,
    sample_volumes,
)
from tests.sampling.test_propagation import WINDOW_LENGTH, StandInDenoiser, make_request

DIFFUSION = DiffusionConfig(prediction_type="epsilon")


class EqualFramesOracle:
    """The exact epsilon predictor for data whose frames are all equal, `x0 = a * ones(L)` with `a ~ N(0, 1)` per
    pixel: a trained stage 2 in miniature, which knows that neighbouring slices agree."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod

    def __call__(self, noisy, timesteps, mask_condition, informed_slice):
        alpha_bar = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
        length = noisy.shape[1]
        frame_mean = noisy.mean(dim=1, keepdim=True)  # (B, 1, C, H, W): sqrt(abar) a + noise of variance (1-abar)/L
        posterior_a = alpha_bar.sqrt() * frame_mean / (alpha_bar + (1 - alpha_bar) / length)
        return (noisy - alpha_bar.sqrt() * posterior_a) / (1 - alpha_bar).sqrt()


def _inpaint(resample: int, known_value: float = 1.5, seeds=range(4)) -> torch.Tensor:
    """Free frames of windows whose first frame is known, denoised by the oracle: (seeds, L - 1, C, H, W)."""
    scheduler = make_sampling_scheduler(DIFFUSION, "ddim")
    scheduler.set_timesteps(10)
    oracle = EqualFramesOracle(scheduler.alphas_cumprod)
    mask = torch.zeros((len(seeds), 4, 3, 16, 16))
    informed = torch.zeros((len(seeds), 1, 16, 16))
    known = [KnownFrames(torch.full((1, 1, 16, 16), known_value), (0,)) for _ in seeds]
    output = denoise_windows(oracle, scheduler, mask, informed, known, list(seeds), eta=1.0, resample=resample)
    return output[:, 1:]


def test_resampling_pulls_generated_frames_onto_the_known_frame():
    """RePaint's claim, on data where the right answer is known: every frame should equal the known one."""
    errors = {resample: float((_inpaint(resample) - 1.5).abs().mean()) for resample in (0, 3)}
    assert errors[3] < 0.6 * errors[0], errors


def test_windows_without_known_frames_come_out_as_without_resampling():
    scheduler = make_sampling_scheduler(DIFFUSION, "ddim")
    scheduler.set_timesteps(5)
    request = make_request(4, 0, 0)
    masks = request.mask_condition[None].expand(2, -1, -1, -1, -1)
    informed = request.informed_slice[None].expand(2, -1, -1, -1)
    known = [None, KnownFrames(torch.full((1, 2, 4, 4), 0.5), (0,))]
    plain = denoise_windows(StandInDenoiser(), scheduler, masks, informed, known, [3, 4], eta=1.0)
    resampled = denoise_windows(StandInDenoiser(), scheduler, masks, informed, known, [3, 4], eta=1.0, resample=2)
    assert torch.equal(resampled[0], plain[0])
    assert not torch.allclose(resampled[1], plain[1])


def test_batched_chains_give_the_sequential_volumes_with_resampling():
    requests = [make_request(9, 4, 0), make_request(5, 0, 1), make_request(12, 11, 3)]
    settings = SamplerSettings(steps=4, eta=1.0, resample=2)
    batched = sample_volumes(StandInDenoiser(), DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains=True)
    sequential = sample_volumes(StandInDenoiser(), DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains=False)
    for volume, reference in zip(batched, sequential, strict=True):
        torch.testing.assert_close(volume, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_chains", [True, False])
def test_resampling_costs_extra_calls_only_for_batches_with_known_frames(batch_chains):
    requests = [make_request(9, 4, 0), make_request(6, 0, 1)]
    calls = {}
    for resample in (0, 2):
        settings = SamplerSettings(steps=4, resample=resample)
        denoiser = StandInDenoiser()
        sample_volumes(denoiser, DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains=batch_chains)
        calls[resample] = len(denoiser.calls)
        assert calls[resample] == count_network_calls(DIFFUSION, settings, requests, WINDOW_LENGTH, batch_chains)
    batches_with_known = (calls[2] - calls[0]) // (3 * 2)  # each takes (steps - 1) * resample extra calls
    assert 0 < batches_with_known < calls[0] // 4


def test_renoising_follows_the_forward_process_between_the_two_timesteps():
    """The extra passes see x_t built from x_prev as q(x_t | x_prev) = N(sqrt(r) x_prev, (1 - r) I)."""
    scheduler = make_sampling_scheduler(DIFFUSION, "ddim")
    scheduler.set_timesteps(5)
    seen = []

    def constant(noisy, timesteps, mask_condition, informed_slice):
        seen.append((int(timesteps[0]), noisy[0, 1:].clone()))
        return torch.zeros_like(noisy)  # x0 prediction = x_t / sqrt(abar): a deterministic step at eta 0

    known = [KnownFrames(torch.zeros((1, 1, 64, 64)), (0,))]
    denoise_windows(
        constant, scheduler, torch.zeros((1, 4, 3, 64, 64)), torch.zeros((1, 1, 64, 64)), known, [0], 0.0, 1
    )
    first_t, first = seen[0]
    again_t, again = seen[1]
    assert again_t == first_t
    previous = first_t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    ratio = scheduler.alphas_cumprod[first_t] / scheduler.alphas_cumprod[previous]
    stepped = first * (scheduler.alphas_cumprod[previous] / scheduler.alphas_cumprod[first_t]).sqrt()
    residual = again - ratio.sqrt() * stepped
    assert abs(float(residual.mean())) < 0.02
    assert float(residual.var()) == pytest.approx(float(1 - ratio), rel=0.1)


def test_resampling_needs_ddim():
    with pytest.raises(ValidationError, match="resample"):
        SamplingConfig(sampler="dpm_solver", resample=1)
    scheduler = make_sampling_scheduler(DIFFUSION, "dpm_solver")
    scheduler.set_timesteps(3)
    request = make_request(4, 0, 0)
    with pytest.raises(ValueError, match="DDIM"):
        denoise_windows(
            StandInDenoiser(),
            scheduler,
            request.mask_condition[None],
            request.informed_slice[None],
            [None],
            [0],
            resample=1,
        )
