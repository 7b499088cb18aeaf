"""Networks built from the configuration: the first-stage codec, the GEM-3D denoiser, the slice generator."""

from __future__ import annotations

from gem3d.anatomy import condition_classes
from gem3d.config import Config
from gem3d.errors import MissingFileError
from gem3d.models.autoencoder import LatentCodec, PixelCodec, build_autoencoder, load_pretrained_autoencoder
from gem3d.models.conditioning import GEM3DDenoiser, SliceGenerator


def sample_channels(config: Config) -> int:
    """Channels of the diffused samples: 1 in pixel space, the autoencoder's latent channels otherwise."""
    return 1 if config.autoencoder.kind == "none" else config.autoencoder.latent_channels


def mask_channels(config: Config, num_classes: int) -> int:
    """Channels of the mask condition: one per condition class (onehot; the outline adds one) or the sample
    channels (encoder)."""
    if config.autoencoder.mask_conditioning == "onehot":
        return condition_classes(num_classes, config.denoiser.anatomy_outline)
    return sample_channels(config)


def _unet_kwargs(config: Config) -> dict:
    denoiser = config.denoiser
    return {
        "model_channels": denoiser.model_channels,
        "channel_mult": denoiser.channel_mult,
        "num_res_blocks": denoiser.num_res_blocks,
        "attention_levels": denoiser.attention_levels,
        "head_channels": denoiser.head_channels,
        "dropout": denoiser.dropout,
        "gradient_checkpointing": config.train.gradient_checkpointing,
    }


def build_denoiser(config: Config, num_classes: int, use_informed_slice: bool = True) -> GEM3DDenoiser:
    """The stage-1 GEM-3D denoiser (or the baseline without informed slice) for labels 0..num_classes."""
    return GEM3DDenoiser(
        sample_channels=sample_channels(config),
        mask_channels=mask_channels(config, num_classes),
        use_informed_slice=use_informed_slice,
        anatomy_outline=config.denoiser.anatomy_outline,
        **_unet_kwargs(config),
    )


def build_slice_generator(config: Config) -> SliceGenerator:
    """The position-conditioned slice model that generates informed slices."""
    return SliceGenerator(channels=sample_channels(config), **_unet_kwargs(config))


def build_codec(config: Config) -> PixelCodec | LatentCodec:
    """The first stage: identity (none), a fresh autoencoder (train), or one loaded offline (pretrained).

    The latent scale is `autoencoder.scale_factor` when set; otherwise a pretrained folder's own `scaling_factor`,
    and for a trained one the scale estimated after its training (stored in its bundle's weights).
    """
    settings = config.autoencoder
    if settings.kind == "none":
        return PixelCodec()
    if settings.kind == "train":
        # scale 1 (unscaled) until training estimates it, unless the config fixes it
        scale = 1.0 if settings.scale_factor is None else settings.scale_factor
        return LatentCodec(build_autoencoder(settings.latent_channels, settings.block_channels, scale_factor=scale))
    if settings.pretrained_path is None:
        raise MissingFileError(
            None, "autoencoder.kind is 'pretrained' but autoencoder.pretrained_path is not set in the config"
        )
    codec = load_pretrained_autoencoder(settings.pretrained_path, settings.scale_factor)
    if codec.latent_channels != settings.latent_channels:
        raise ValueError(
            f"{settings.pretrained_path}: autoencoder has {codec.latent_channels} latent channels, "
            f"config autoencoder.latent_channels says {settings.latent_channels}"
        )
    return codec
