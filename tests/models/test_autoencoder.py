"""First-stage codecs: pixel identity, a tiny diffusers AutoencoderKL, offline save and load, the loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gem3d.errors import MissingFileError, UnreadableFileError
from gem3d.models.autoencoder import (
    LatentCodec,
    PixelCodec,
    autoencoder_loss,
    build_autoencoder,
    load_pretrained_autoencoder,
)


def _tiny_codec(in_channels: int = 1, scale_factor: float = 0.5) -> LatentCodec:
    torch.manual_seed(0)
    autoencoder = build_autoencoder(2, (8, 16), in_channels=in_channels, scale_factor=scale_factor)
    return LatentCodec(autoencoder.eval())


def test_pixel_codec_round_trip_is_identity() -> None:
    codec = PixelCodec()
    slices = torch.rand(5, 1, 16, 16) * 2 - 1
    assert codec.latent_channels == 1 and codec.downsampling == 1
    assert torch.equal(codec.decode(codec.encode(slices), chunk=2), slices)


def test_latent_codec_shapes_and_scaled_posterior_mean() -> None:
    codec = _tiny_codec()
    slices = torch.rand(5, 1, 16, 16) * 2 - 1
    latents = codec.encode(slices, chunk=2)
    assert (codec.latent_channels, codec.downsampling) == (2, 2)
    assert latents.shape == (5, 2, 8, 8)
    with torch.no_grad():
        expected = codec.autoencoder.encode(slices).latent_dist.mean * 0.5
    assert torch.allclose(latents, expected, atol=1e-5)
    decoded = codec.decode(latents, chunk=3)
    assert decoded.shape == (5, 1, 16, 16)
    assert torch.allclose(decoded, codec.decode(latents, chunk=16), atol=1e-5)


def test_rgb_autoencoder_takes_grayscale_and_returns_the_channel_mean() -> None:
    codec = _tiny_codec(in_channels=3)
    slices = torch.rand(2, 1, 16, 16) * 2 - 1
    latents = codec.encode(slices)
    assert latents.shape == (2, 2, 8, 8)
    with torch.no_grad():
        rgb = codec.autoencoder.decode(latents / codec.scale_factor).sample
    assert torch.allclose(codec.decode(latents), rgb.mean(dim=1, keepdim=True), atol=1e-6)


def test_saved_autoencoder_loads_offline_with_the_same_outputs(tmp_path: Path) -> None:
    codec = _tiny_codec(scale_factor=0.3)
    codec.autoencoder.save_pretrained(tmp_path / "vae")
    loaded = load_pretrained_autoencoder(tmp_path / "vae").eval()
    assert loaded.scale_factor == pytest.approx(0.3)
    slices = torch.rand(3, 1, 16, 16) * 2 - 1
    latents = codec.encode(slices)
    assert torch.allclose(loaded.encode(slices), latents, atol=1e-6)
    assert torch.allclose(loaded.decode(latents), codec.decode(latents), atol=1e-6)
    assert load_pretrained_autoencoder(tmp_path / "vae", scale_factor=0.18215).scale_factor == 0.18215


def test_loading_a_folder_without_an_autoencoder_raises(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="config.json"):
        load_pretrained_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UnreadableFileError, match="cannot load"):
        load_pretrained_autoencoder(tmp_path)


def test_autoencoder_loss_trains_reconstruction() -> None:
    torch.manual_seed(0)
    model = build_autoencoder(2, (8, 16))
    grid = torch.linspace(-1, 1, 16)
    scales = [(1.0, 1.0), (0.5, -1.0), (-1.0, 0.3), (0.8, 0.8)]
    slices = torch.stack([torch.outer(grid * a, grid * b) for a, b in scales])[:, None]  # smooth slices
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss, reconstruction = autoencoder_loss(model, slices, kl_weight=1e-6)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert reconstruction.shape == slices.shape
    assert losses[-1] < 0.6 * losses[0]
    mse, _ = autoencoder_loss(model, slices, kl_weight=0.0, reconstruction="mse")
    assert mse.ndim == 0 and mse > 0
    with pytest.raises(ValueError, match="reconstruction"):
        autoencoder_loss(model, slices, kl_weight=0.0, reconstruction="l2")
