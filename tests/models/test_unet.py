"""SliceUNet: shapes for any window length, stage-1 independence, stage-2 identity at init, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gem3d.models.pseudo3d import TemporalAttention, TemporalConv
from gem3d.models.unet import SliceUNet

TWO_LEVELS = {"model_channels": 16, "channel_mult": (1, 2), "attention_levels": (False, True), "head_channels": 8}


def _unet(in_channels: int = 2, out_channels: int = 1, **overrides) -> SliceUNet:
    return SliceUNet(in_channels, out_channels, **{**TWO_LEVELS, **overrides})


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, including the zero-initialised outputs (else the UNet returns zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@pytest.mark.parametrize("num_slices", [1, 3, 8])
@pytest.mark.parametrize("size", [8, 16])
def test_output_shape_for_any_window_length(num_slices: int, size: int) -> None:
    unet = _unet(in_channels=3, out_channels=2)
    out = unet(torch.randn(2, num_slices, 3, size, size), torch.randint(0, 1000, (2, num_slices)))
    assert out.shape == (2, num_slices, 2, size, size)


def test_rejects_sizes_the_levels_cannot_halve() -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        _unet()(torch.randn(1, 2, 2, 15, 15), torch.zeros(1, 2))


def test_one_timestep_per_window_equals_it_repeated_per_slice() -> None:
    unet = _unet()
    _randomise(unet)
    x = torch.randn(2, 3, 2, 8, 8)
    per_window = unet(x, torch.tensor([10, 500]))
    per_slice = unet(x, torch.tensor([[10, 10, 10], [500, 500, 500]]))
    assert torch.allclose(per_window, per_slice, atol=1e-6)
    assert not torch.allclose(per_window, unet(x, torch.tensor([11, 500])), atol=1e-4)


def _frame1_change(unet: SliceUNet, x: torch.Tensor, timesteps: torch.Tensor) -> float:
    changed = x.clone()
    changed[:, 0] = torch.randn_like(changed[:, 0])
    return (unet(changed, timesteps)[:, 1] - unet(x, timesteps)[:, 1]).abs().max().item()


def test_volumetric_tuning_starts_as_stage1_and_couples_slices_once_trained() -> None:
    torch.manual_seed(0)
    unet = _unet()
    _randomise(unet)
    x = torch.randn(2, 4, 2, 16, 16)  # every slice differs
    timesteps = torch.tensor([30, 700])
    with torch.no_grad():
        stage1 = unet(x, timesteps)
        assert _frame1_change(unet, x, timesteps) < 1e-6  # stage 1: slices are independent samples
        unet.enable_volumetric_tuning()
        assert torch.allclose(unet(x, timesteps), stage1, atol=1e-5)
        assert _frame1_change(unet, x, timesteps) < 1e-6
        conv = next(module for module in unet.modules() if isinstance(module, TemporalConv))
        conv.conv.weight.normal_(std=0.1)
        assert _frame1_change(unet, x, timesteps) > 1e-3


def test_temporal_attention_couples_slices_of_the_middle_block() -> None:
    unet = _unet()
    _randomise(unet)
    unet.enable_volumetric_tuning()
    x = torch.randn(1, 3, 2, 8, 8)
    timesteps = torch.tensor([100])
    with torch.no_grad():
        unet.middle[1].temporal.to_out.weight.normal_(std=0.5)
        assert _frame1_change(unet, x, timesteps) > 1e-3


def test_identity_holds_without_temporal_attention_too() -> None:
    unet = _unet()
    _randomise(unet, seed=1)
    x = torch.randn(1, 5, 2, 8, 8)
    with torch.no_grad():
        stage1 = unet(x, torch.tensor([250]))
        unet.enable_volumetric_tuning(temporal_attention=False)
        assert torch.allclose(unet(x, torch.tensor([250])), stage1, atol=1e-5)
    assert not any(isinstance(module, TemporalAttention) for module in unet.modules())


@pytest.mark.parametrize("temporal_attention", [True, False])
def test_temporal_parameters_are_exactly_the_added_ones(temporal_attention: bool) -> None:
    unet = _unet(num_res_blocks=2)
    before = {id(parameter) for parameter in unet.parameters()}
    unet.enable_volumetric_tuning(temporal_attention)
    added = {id(parameter) for parameter in unet.parameters()} - before
    temporal = [id(parameter) for parameter in unet.temporal_parameters()]
    assert added and len(temporal) == len(set(temporal)) and set(temporal) == added
    num_resblock_convs = 2 * (2 * 2 + 3 * 2 + 2)  # two per ResBlock: down, up, middle
    num_convs = sum(isinstance(module, TemporalConv) for module in unet.modules())
    assert num_convs == num_resblock_convs
    num_attention = sum(isinstance(module, TemporalAttention) for module in unet.modules())
    assert num_attention == ((2 + 3 + 1) if temporal_attention else 0)  # level-1 down, up, middle


def test_volumetric_tuning_cannot_be_enabled_twice() -> None:
    unet = _unet()
    unet.enable_volumetric_tuning()
    with pytest.raises(RuntimeError, match="already"):
        unet.enable_volumetric_tuning()


def test_tuned_network_runs_with_window_length_changing_between_calls() -> None:
    unet = _unet()
    _randomise(unet)
    unet.enable_volumetric_tuning()
    for num_slices in (1, 5, 2):
        out = unet(torch.randn(1, num_slices, 2, 8, 8), torch.tensor([3]))
        assert out.shape == (1, num_slices, 1, 8, 8)


def test_stage2_state_dict_loads_into_a_freshly_tuned_network() -> None:
    trained = _unet()
    _randomise(trained)
    trained.enable_volumetric_tuning()
    reloaded = _unet()
    reloaded.enable_volumetric_tuning()
    reloaded.load_state_dict(trained.state_dict())
    x = torch.randn(1, 3, 2, 8, 8)
    assert torch.equal(reloaded(x, torch.tensor([9])), trained(x, torch.tensor([9])))


def test_extra_embedding_changes_the_output_and_is_required_when_configured() -> None:
    unet = _unet(extra_embedding_dim=6)
    _randomise(unet)
    x = torch.randn(1, 2, 2, 8, 8)
    first = unet(x, torch.tensor([5]), torch.zeros(1, 2, 6))
    assert not torch.allclose(first, unet(x, torch.tensor([5]), torch.ones(1, 2, 6)), atol=1e-4)
    with pytest.raises(ValueError, match="extra_embedding"):
        unet(x, torch.tensor([5]))
    with pytest.raises(ValueError, match="extra_embedding"):
        _unet()(x, torch.tensor([5]), torch.zeros(1, 2, 6))


def test_tiny_unet_overfits_one_window() -> None:
    torch.manual_seed(0)
    unet = SliceUNet(2, 1, model_channels=16, channel_mult=(1,), attention_levels=(False,), head_channels=8)
    generator = torch.Generator().manual_seed(0)
    clean, noise, mask = torch.randn(3, 1, 2, 1, 16, 16, generator=generator).unbind(0)
    noisy = torch.cat([0.7 * clean + 0.7 * noise, mask], dim=2)
    timesteps = torch.tensor([[100, 700]])
    optimiser = torch.optim.Adam(unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(unet(noisy, timesteps), noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    plain = _unet()
    _randomise(plain)
    plain.enable_volumetric_tuning()
    checkpointed = _unet(gradient_checkpointing=True)
    checkpointed.enable_volumetric_tuning()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 2, 8, 8)
    gradients = []
    for unet in (plain, checkpointed):
        unet.zero_grad()
        unet(x, torch.tensor([40])).square().mean().backward()
        gradients.append([parameter.grad for parameter in unet.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*gradients, strict=True))
    assert any(gradient.abs().sum() > 0 for gradient in gradients[1])
