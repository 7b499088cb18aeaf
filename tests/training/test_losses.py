"""The denoising losses: noisy inputs, targets and timesteps agree per slice (stage 1) or per window (stage 2)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import default_collate

from gem3d.data import SliceDataset, WindowDataset
from gem3d.models.autoencoder import PixelCodec
from gem3d.training.phases import STAGES, LossContext, slice_loss, window_loss
from tests.training.conftest import tiny_config


class TrueTarget:
    """A perfect network: recovers the target from the noisy input, the clean sample and the timesteps."""

    def __init__(self, context: LossContext, clean: torch.Tensor, prediction_type: str) -> None:
        self.alphas = context.scheduler.alphas_cumprod
        self.clean = clean
        self.prediction_type = prediction_type
        self.calls: list[dict] = []

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, *conditions: torch.Tensor | None) -> torch.Tensor:
        self.calls.append({"timesteps": timesteps, "conditions": conditions})
        abar = self.alphas[timesteps].float()
        while abar.ndim < noisy.ndim:
            abar = abar[..., None]
        noise = (noisy - abar.sqrt() * self.clean) / (1 - abar).sqrt()
        if self.prediction_type == "epsilon":
            return noise
        return abar.sqrt() * noise - (1 - abar).sqrt() * self.clean


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("stage", "phase_index"), [("stage1", 0), ("stage2", 0), ("baseline", 0), ("baseline", 1)])
def test_window_loss_is_zero_for_the_true_target(
    small_store: Path, prediction_type: str, stage: str, phase_index: int
) -> None:
    config = tiny_config(diffusion={"prediction_type": prediction_type})
    phase = STAGES[stage][phase_index]
    context = LossContext(config, phase, 2, PixelCodec(), torch.device("cpu"))
    dataset = WindowDataset(small_store, ["case_b", "case_c"], 4, seed=0, samples_per_epoch=3)
    batch = default_collate([dataset[index] for index in range(3)])
    network = TrueTarget(context, batch["image"].double(), prediction_type)
    torch.manual_seed(0)
    loss = window_loss(context, network, batch)
    assert float(loss) < 1e-8
    timesteps = network.calls[0]["timesteps"]
    mask_condition, informed = network.calls[0]["conditions"]
    if phase.volumetric:
        assert timesteps.shape == (3,)  # one timestep shared by a window's slices
    else:
        assert timesteps.shape == (3, 4) and len(set(timesteps.flatten().tolist())) > 3  # one per slice
    assert mask_condition.shape == (3, 4, 3, 16, 16)  # labels 1, 2 and "body, no label"
    assert torch.equal(mask_condition[:, :, 1], (batch["label"] == 2).float())
    body = (batch["outline"] > 0) & (batch["label"] == 0)
    assert body.any() and torch.equal(mask_condition[:, :, 2], body.float())
    if phase.use_informed_slice:
        assert torch.equal(informed, batch["informed_slice"])
    else:
        assert informed is None


def test_a_wrong_prediction_gives_a_positive_window_loss(small_store: Path) -> None:
    context = LossContext(tiny_config(), STAGES["stage1"][0], 2, PixelCodec(), torch.device("cpu"))
    batch = default_collate([WindowDataset(small_store, ["case_b"], 4, seed=0)[0]])
    loss = window_loss(context, lambda noisy, *rest: torch.zeros_like(noisy), batch)
    assert 0.5 < float(loss) < 2.0  # E[eps^2] = 1


def test_slice_loss_conditions_on_the_relative_position(small_store: Path) -> None:
    context = LossContext(tiny_config(), STAGES["slicegen"][0], 2, PixelCodec(), torch.device("cpu"))
    dataset = SliceDataset(small_store, ["case_a"], seed=0)
    batch = default_collate([dataset[index] for index in range(6)])
    network = TrueTarget(context, batch["image"].double(), "epsilon")
    assert float(slice_loss(context, network, batch)) < 1e-8
    (position,) = network.calls[0]["conditions"]
    assert torch.allclose(position, torch.arange(6) / 6)


def _low_noise_weights(num_train_timesteps: int) -> np.ndarray:
    """The method's stage-2 timestep law: P(t) proportional to 2T - t over t in [0, T) (GEM3D.md, "Stage 2")."""
    steps = np.arange(num_train_timesteps, dtype=np.float64)
    weights = 2 * num_train_timesteps - steps
    return weights / weights.sum()


@pytest.mark.parametrize(("stage", "phase_index"), [("stage2", 0), ("baseline", 1)])
def test_volumetric_tuning_draws_window_timesteps_with_weight_two_t_minus_t(
    small_store: Path, stage: str, phase_index: int
) -> None:
    config = tiny_config()
    steps = config.diffusion.num_train_timesteps
    context = LossContext(config, STAGES[stage][phase_index], 2, PixelCodec(), torch.device("cpu"))
    window = default_collate([WindowDataset(small_store, ["case_b"], 4, seed=0)[0]])
    windows = 6000
    batch = {name: value.expand(windows, *value.shape[1:]) for name, value in window.items() if torch.is_tensor(value)}
    drawn = []

    def network(noisy: torch.Tensor, timesteps: torch.Tensor, *conditions: torch.Tensor | None) -> torch.Tensor:
        drawn.append(timesteps)
        return torch.zeros_like(noisy)

    torch.manual_seed(0)
    window_loss(context, network, batch)
    timesteps = drawn[0].numpy()
    assert timesteps.shape == (windows,)
    probabilities = _low_noise_weights(steps)
    expected_mean = float((np.arange(steps) * probabilities).sum())  # 443.9 for T = 1000; uniform: 499.5
    spread = float(np.sqrt(((np.arange(steps) - expected_mean) ** 2 * probabilities).sum()))
    tolerance = 4 * spread / np.sqrt(windows)  # about 15: a uniform sampler misses by 55
    assert abs(timesteps.mean() - expected_mean) < tolerance
    assert abs((steps - 1) / 2 - expected_mean) > 3 * tolerance
    bins = np.linspace(0, steps, 11).astype(int)
    observed = np.histogram(timesteps, bins=bins)[0]
    expected = np.array([probabilities[low:high].sum() for low, high in itertools.pairwise(bins)]) * windows
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    uniform = np.full(10, windows / 10)
    assert stats.chisquare(uniform, expected).pvalue < 1e-6  # the test tells a uniform law apart


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_min_snr_weighting_is_an_x0_loss_clamped_at_gamma(
    small_store: Path, prediction_type: str, gamma: float | None
) -> None:
    """A network whose implied clean estimate is off by `delta` everywhere: with Min-SNR-gamma its loss is
    mean(min(SNR, gamma)) * delta^2 for either target (Hang et al. 2023); unweighted it is the target's own MSE."""
    config = tiny_config(diffusion={"prediction_type": prediction_type, "min_snr_gamma": gamma})
    context = LossContext(config, STAGES["stage1"][0], 2, PixelCodec(), torch.device("cpu"))
    batch = default_collate([WindowDataset(small_store, ["case_b", "case_c"], 4, seed=0)[i] for i in range(2)])
    delta = 0.1
    network = TrueTarget(context, batch["image"].double() + delta, prediction_type)
    torch.manual_seed(1)
    loss = float(window_loss(context, network, batch))
    abar = context.scheduler.alphas_cumprod[network.calls[0]["timesteps"].flatten()].double()
    snr = abar / (1 - abar)
    assert snr.min() < 5 < snr.max()  # both sides of the clamp are exercised
    unweighted = snr if prediction_type == "epsilon" else snr + 1  # target error^2 / x0 error^2
    per_slice = unweighted if gamma is None else snr.clamp(max=gamma)
    assert loss == pytest.approx(float(per_slice.mean()) * delta**2, rel=1e-4)
