"""Networks built from the configuration: channel bookkeeping per first stage and mask-conditioning mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gem3d.config import Config, load_config
from gem3d.errors import MissingFileError
from gem3d.models.autoencoder import LatentCodec, PixelCodec, build_autoencoder
from gem3d.models.factory import build_codec, build_denoiser, build_slice_generator

SMALL_DENOISER = {"model_channels": 16, "channel_mult": [1, 2], "attention_levels": [False, True], "head_channels": 8}


def _config(**autoencoder) -> Config:
    return Config.model_validate({"denoiser": SMALL_DENOISER, "autoencoder": autoencoder})


def test_tiny_preset_is_pixel_space_with_onehot_masks_and_the_anatomy_outline() -> None:
    config = load_config("tiny")
    assert isinstance(build_codec(config), PixelCodec)
    denoiser = build_denoiser(config, num_classes=3)
    # one channel per label, one for "inside the body outline, no label"
    assert (denoiser.sample_channels, denoiser.mask_channels, denoiser.anatomy_outline) == (1, 4, True)
    assert denoiser.unet.in_channels == 1 + 4 + 1 and denoiser.unet.out_channels == 1
    assert build_denoiser(config, num_classes=3, use_informed_slice=False).unet.in_channels == 1 + 4


def test_the_outline_switch_gives_back_the_papers_mask_only_condition() -> None:
    config = load_config("tiny")
    config = config.model_copy(update={"denoiser": config.denoiser.model_copy(update={"anatomy_outline": False})})
    denoiser = build_denoiser(config, num_classes=3)
    assert (denoiser.mask_channels, denoiser.anatomy_outline) == (3, False)
    assert denoiser.unet.in_channels == 1 + 3 + 1


def test_trained_autoencoder_with_encoder_masks_gives_the_papers_twelve_channels() -> None:
    config = _config(kind="train", latent_channels=4, block_channels=[8, 16, 16, 16], mask_conditioning="encoder")
    codec = build_codec(config)
    assert isinstance(codec, LatentCodec)
    assert (codec.latent_channels, codec.downsampling) == (4, 8)
    denoiser = build_denoiser(config, num_classes=4)
    assert denoiser.unet.in_channels == 12 and denoiser.unet.out_channels == 4
    window = torch.randn(1, 2, 4, 8, 8)
    out = denoiser(window, torch.tensor([10]), torch.randn(1, 2, 4, 8, 8), torch.randn(1, 4, 8, 8))
    assert out.shape == window.shape


def test_pretrained_autoencoder_is_loaded_from_the_configured_folder(tmp_path: Path) -> None:
    build_autoencoder(3, (8, 16)).save_pretrained(tmp_path / "vae")
    codec = build_codec(_config(kind="pretrained", pretrained_path=str(tmp_path / "vae"), latent_channels=3))
    assert isinstance(codec, LatentCodec) and codec.latent_channels == 3
    with pytest.raises(ValueError, match="3 latent channels"):
        build_codec(_config(kind="pretrained", pretrained_path=str(tmp_path / "vae"), latent_channels=4))


def test_a_fresh_trained_autoencoder_is_unscaled_until_its_scale_is_estimated_unless_the_config_fixes_it() -> None:
    assert build_codec(_config(kind="train")).scale_factor == 1.0
    assert build_codec(_config(kind="train", scale_factor=0.4)).scale_factor == pytest.approx(0.4)


def test_pretrained_autoencoder_keeps_its_folders_scaling_factor_unless_the_config_sets_one(tmp_path: Path) -> None:
    build_autoencoder(3, (8, 16), scale_factor=0.37).save_pretrained(tmp_path / "vae")
    folder = str(tmp_path / "vae")
    codec = build_codec(_config(kind="pretrained", pretrained_path=folder, latent_channels=3))
    assert codec.scale_factor == pytest.approx(0.37)
    slices = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.allclose(codec.encode(slices), codec.posterior_mean(slices) * 0.37, atol=1e-6)
    fixed = build_codec(_config(kind="pretrained", pretrained_path=folder, latent_channels=3, scale_factor=0.2))
    assert fixed.scale_factor == pytest.approx(0.2)


def test_pretrained_autoencoder_without_a_usable_path_raises_clearly(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="pretrained_path is not set"):
        build_codec(_config(kind="pretrained"))
    with pytest.raises(MissingFileError, match="config.json missing"):
        build_codec(_config(kind="pretrained", pretrained_path=str(tmp_path / "absent")))


def test_gradient_checkpointing_follows_the_training_config() -> None:
    config = Config.model_validate({"denoiser": SMALL_DENOISER, "train": {"gradient_checkpointing": True}})
    assert build_denoiser(config, num_classes=2).unet.gradient_checkpointing
    assert not build_denoiser(_config(), num_classes=2).unet.gradient_checkpointing


def test_slice_generator_generates_samples_of_the_codec_channels() -> None:
    generator = build_slice_generator(_config(kind="train", latent_channels=2))
    noisy = torch.randn(2, 2, 8, 8)
    assert generator(noisy, torch.tensor([3, 900]), torch.tensor([0.0, 1.0])).shape == noisy.shape
