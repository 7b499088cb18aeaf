"""Mask conditions, the GEM-3D denoiser's channel concat, and the position-conditioned slice generator."""

from __future__ import annotations

import pytest
import torch

from gem3d.models.autoencoder import LatentCodec, PixelCodec, build_autoencoder
from gem3d.models.conditioning import GEM3DDenoiser, SliceGenerator, mask_to_condition

TINY = {"model_channels": 16, "channel_mult": (1, 2), "attention_levels": (False, True), "head_channels": 8}


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def test_onehot_condition_at_full_size_is_exact_one_hot_without_background() -> None:
    label = torch.randint(0, 4, (2, 3, 8, 8))
    condition = mask_to_condition(label, num_classes=3, mode="onehot", size=8)
    assert condition.shape == (2, 3, 3, 8, 8)
    for class_index in (1, 2, 3):
        assert torch.equal(condition[:, :, class_index - 1], (label == class_index).float())
    assert torch.equal(condition.sum(dim=2), (label > 0).float())  # background: all channels zero


def test_onehot_condition_is_area_downsampled_to_latent_size() -> None:
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[0, 0, 0, 0] = 2  # one pixel of the top-left 2x2 block
    label[0, 0, 2:, 2:] = 1  # the whole bottom-right block
    condition = mask_to_condition(label, num_classes=2, mode="onehot", size=2)
    assert condition.shape == (1, 1, 2, 2, 2)
    assert torch.equal(condition[0, 0, 0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(condition[0, 0, 1], torch.tensor([[0.25, 0.0], [0.0, 0.0]]))


def test_encoder_condition_scales_labels_to_unit_range_like_the_paper() -> None:
    label = torch.tensor([0, 1, 2, 4]).reshape(1, 1, 2, 2)
    condition = mask_to_condition(label, num_classes=4, mode="encoder", size=2, autoencoder=PixelCodec())
    assert torch.equal(condition, torch.tensor([-1.0, -0.5, 0.0, 1.0]).reshape(1, 1, 1, 2, 2))


def test_encoder_condition_through_an_autoencoder_has_latent_shape() -> None:
    codec = LatentCodec(build_autoencoder(latent_channels=3, block_channels=(8, 8)))
    label = torch.randint(0, 3, (2, 3, 16, 16))
    condition = mask_to_condition(label, num_classes=2, mode="encoder", size=8, autoencoder=codec)
    assert condition.shape == (2, 3, 3, 8, 8)
    with pytest.raises(ValueError, match="expected 4x4"):
        mask_to_condition(label, num_classes=2, mode="encoder", size=4, autoencoder=codec)


def test_mask_condition_rejects_bad_input() -> None:
    label = torch.full((1, 1, 4, 4), 3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        mask_to_condition(label, num_classes=2, mode="onehot", size=4)
    with pytest.raises(ValueError, match="needs the autoencoder"):
        mask_to_condition(label, num_classes=3, mode="encoder", size=4)


def test_denoiser_with_informed_slice_concatenates_it_to_every_frame() -> None:
    denoiser = GEM3DDenoiser(sample_channels=2, mask_channels=3, use_informed_slice=True, **TINY)
    _randomise(denoiser)
    assert denoiser.unet.in_channels == 2 + 3 + 2
    noisy, mask = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 3, 8, 8)
    informed = torch.randn(1, 2, 8, 8)
    timesteps = torch.tensor([100])
    out = denoiser(noisy, timesteps, mask, informed)
    assert out.shape == (1, 4, 2, 8, 8)
    manual = torch.cat([noisy, mask, informed[:, None].expand(1, 4, 2, 8, 8)], dim=2)
    assert torch.allclose(out, denoiser.unet(manual, timesteps), atol=1e-6)
    assert not torch.allclose(out, denoiser(noisy, timesteps, mask, torch.randn(1, 2, 8, 8)), atol=1e-4)
    with pytest.raises(ValueError, match="informed slice"):
        denoiser(noisy, timesteps, mask)


def test_baseline_denoiser_takes_no_informed_slice() -> None:
    denoiser = GEM3DDenoiser(sample_channels=1, mask_channels=2, use_informed_slice=False, **TINY)
    assert denoiser.unet.in_channels == 1 + 2
    noisy, mask = torch.randn(2, 3, 1, 8, 8), torch.randn(2, 3, 2, 8, 8)
    assert denoiser(noisy, torch.tensor([1, 2]), mask).shape == (2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="no informed slice"):
        denoiser(noisy, torch.tensor([1, 2]), mask, torch.randn(2, 1, 8, 8))


def test_denoiser_volumetric_tuning_delegates_to_the_unet() -> None:
    denoiser = GEM3DDenoiser(sample_channels=1, mask_channels=1, use_informed_slice=True, **TINY)
    denoiser.enable_volumetric_tuning()
    assert denoiser.unet.volumetric_tuning
    assert {id(p) for p in denoiser.temporal_parameters()} == {id(p) for p in denoiser.unet.temporal_parameters()}


def test_slice_generator_is_conditioned_on_position() -> None:
    generator = SliceGenerator(channels=2, **TINY)
    _randomise(generator)
    noisy, timesteps = torch.randn(3, 2, 8, 8), torch.tensor([5, 50, 500])
    low = generator(noisy, timesteps, torch.full((3,), 0.2))
    assert low.shape == (3, 2, 8, 8)
    assert not torch.allclose(low, generator(noisy, timesteps, torch.full((3,), 0.6)), atol=1e-4)
