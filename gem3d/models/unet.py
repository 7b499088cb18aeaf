"""The 2D diffusion UNet applied slice by slice to windows, and its pseudo-3D extension (volumetric tuning).

Stage 1 treats the `L` slices of a window as independent 2D samples. `enable_volumetric_tuning` inserts
identity-initialised slice-axis convolutions and attention (stage 2), so the network starts from exactly
the stage-1 function and only the new parameters need training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from gem3d.models.pseudo3d import TemporalAttention, TemporalConv, chunked_attention


def timestep_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `[cos, sin]` of (N,) integer or float values -> (N, dim)."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    angles = values.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


def num_groups(channels: int) -> int:
    """GroupNorm groups: up to 32, keeping at least 4 channels per group where possible."""
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 4:
        groups //= 2
    return groups


def _zero(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def _embedding_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, add the time embedding, GroupNorm-SiLU-dropout-conv, plus a skip connection."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_norm = nn.GroupNorm(num_groups(in_channels), in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding = nn.Sequential(nn.SiLU(), nn.Linear(embedding_dim, out_channels))
        self.out_norm = nn.GroupNorm(num_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.temporal_in: TemporalConv | None = None
        self.temporal_out: TemporalConv | None = None

    def add_temporal_layers(self) -> None:
        """Insert a slice-axis convolution after each of the two spatial convolutions."""
        channels = self.in_conv.out_channels
        self.temporal_in = TemporalConv(channels).to(self.in_conv.weight)
        self.temporal_out = TemporalConv(channels).to(self.in_conv.weight)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, num_slices: int) -> torch.Tensor:
        """(B*L, C_in, H, W), (B*L, E) -> (B*L, C_out, H, W)."""
        hidden = self.in_conv(F.silu(self.in_norm(x)))
        if self.temporal_in is not None:
            hidden = self.temporal_in(hidden, num_slices)
        hidden = hidden + self.embedding(embedding)[:, :, None, None]
        hidden = self.out_conv(self.dropout(F.silu(self.out_norm(hidden))))
        if self.temporal_out is not None:
            hidden = self.temporal_out(hidden, num_slices)
        return self.skip(x) + hidden


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the pixels of each slice, residual with a zero-initialised output."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        if channels % self.num_heads != 0:
            raise ValueError(f"channels {channels} not divisible into {self.num_heads} heads")
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.to_out = _zero(nn.Conv2d(channels, channels, 1))
        self.head_channels = head_channels
        self.temporal: TemporalAttention | None = None

    def add_temporal_layers(self) -> None:
        """Insert slice-axis attention after the spatial attention."""
        channels = self.to_qkv.in_channels
        self.temporal = TemporalAttention(channels, self.head_channels).to(self.to_qkv.weight)

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """(B*L, C, H, W) -> (B*L, C, H, W)."""
        height, width = x.shape[-2:]
        qkv = self.to_qkv(self.norm(x))
        # (B*L, 3C, H, W) -> 3 x (B*L, heads, H*W, d)
        query, key, value = rearrange(
            qkv, "n (three heads d) h w -> three n heads (h w) d", three=3, heads=self.num_heads
        )
        attended = chunked_attention(query, key, value)
        # (B*L, heads, H*W, d) -> (B*L, C, H, W)
        x = x + self.to_out(rearrange(attended, "n heads (h w) d -> n (heads d) h w", h=height, w=width))
        if self.temporal is not None:
            x = self.temporal(x, num_slices)
        return x


class Downsample(nn.Module):
    """Strided 3x3 convolution halving H and W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour doubling of H and W followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class BlockSequence(nn.Sequential):
    """A sequence of UNet layers; each gets the inputs it needs (embedding, window length)."""

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, num_slices: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, embedding, num_slices)
            elif isinstance(layer, SpatialAttention):
                x = layer(x, num_slices)
            else:
                x = layer(x)
        return x


class SliceUNet(nn.Module):
    """2D diffusion UNet over windows `(B, L, C, H, W)`, folded to `B*L` slices; pseudo-3D after tuning.

    `extra_embedding_dim` enables an extra per-slice embedding (through an MLP) added to the time embedding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] = (False, True),
        head_channels: int = 32,
        dropout: float = 0.0,
        extra_embedding_dim: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(attention_levels) != len(channel_mult):
            raise ValueError(
                f"attention_levels {tuple(attention_levels)}: one entry per level of {tuple(channel_mult)}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.num_levels = len(channel_mult)
        self.gradient_checkpointing = gradient_checkpointing
        self.volumetric_tuning = False
        embedding_dim = 4 * model_channels
        self.time_embed = _embedding_mlp(model_channels, embedding_dim)
        self.extra_embed = _embedding_mlp(extra_embedding_dim, embedding_dim) if extra_embedding_dim else None
        self.input_conv = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        def block(cin: int, cout: int, level: int) -> list[nn.Module]:
            layers: list[nn.Module] = [ResBlock(cin, cout, embedding_dim, dropout)]
            if attention_levels[level]:
                layers.append(SpatialAttention(cout, head_channels))
            return layers

        channels = model_channels
        skip_channels = [channels]
        self.down_stages = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down_stages.append(BlockSequence(*block(channels, mult * model_channels, level)))
                channels = mult * model_channels
                skip_channels.append(channels)
            if level < self.num_levels - 1:
                self.down_stages.append(BlockSequence(Downsample(channels)))
                skip_channels.append(channels)
        self.middle = BlockSequence(
            ResBlock(channels, channels, embedding_dim, dropout),
            SpatialAttention(channels, head_channels),
            ResBlock(channels, channels, embedding_dim, dropout),
        )
        self.up_stages = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for index in range(num_res_blocks + 1):
                layers = block(channels + skip_channels.pop(), mult * model_channels, level)
                channels = mult * model_channels
                if level > 0 and index == num_res_blocks:
                    layers.append(Upsample(channels))
                self.up_stages.append(BlockSequence(*layers))
        self.output = nn.Sequential(
            nn.GroupNorm(num_groups(channels), channels),
            nn.SiLU(),
            _zero(nn.Conv2d(channels, out_channels, 3, padding=1)),
        )

    def enable_volumetric_tuning(self, temporal_attention: bool = True) -> None:
        """Stage 2: add identity-initialised slice-axis convolutions (every ResBlock) and attention."""
        if self.volumetric_tuning:
            raise RuntimeError("volumetric tuning is already enabled on this network")
        for module in list(self.modules()):
            if isinstance(module, ResBlock) or (temporal_attention and isinstance(module, SpatialAttention)):
                module.add_temporal_layers()
        self.volumetric_tuning = True

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters added by `enable_volumetric_tuning`: the only ones trained in stage 2."""
        for module in self.modules():
            if isinstance(module, TemporalConv | TemporalAttention):
                yield from module.parameters()

    def _run(self, blocks: BlockSequence, x: torch.Tensor, embedding: torch.Tensor, num_slices: int) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(blocks, x, embedding, num_slices, use_reentrant=False)
        return blocks(x, embedding, num_slices)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, extra_embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict eps (or v) per slice: x (B, L, C_in, H, W) -> (B, L, C_out, H, W).

        timesteps (B, L) per slice (stage 1) or (B,) per window (stage 2); extra_embedding (B, L, E).
        """
        batch, num_slices, _, height, width = x.shape
        factor = 2 ** (self.num_levels - 1)
        if height % factor or width % factor:
            raise ValueError(f"slice size {height}x{width} must be divisible by {factor} for this UNet")
        if (extra_embedding is None) != (self.extra_embed is None):
            raise ValueError("extra_embedding must be given exactly when the network has extra_embedding_dim")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.ndim == 1:
            timesteps = repeat(timesteps, "b -> b l", l=num_slices)
        dtype = self.input_conv.weight.dtype
        # (B, L) -> (B*L, E)
        embedding = self.time_embed(
            timestep_embedding(rearrange(timesteps, "b l -> (b l)"), self.model_channels).to(dtype)
        )
        if extra_embedding is not None:
            embedding = embedding + self.extra_embed(rearrange(extra_embedding, "b l e -> (b l) e").to(dtype))
        # (B, L, C, H, W) -> (B*L, C, H, W)
        hidden = self.input_conv(rearrange(x, "b l c h w -> (b l) c h w"))
        skips = [hidden]
        for stage in self.down_stages:
            hidden = self._run(stage, hidden, embedding, num_slices)
            skips.append(hidden)
        hidden = self._run(self.middle, hidden, embedding, num_slices)
        for stage in self.up_stages:
            hidden = self._run(stage, torch.cat([hidden, skips.pop()], dim=1), embedding, num_slices)
        # (B*L, C_out, H, W) -> (B, L, C_out, H, W)
        return rearrange(self.output(hidden), "(b l) c h w -> b l c h w", b=batch)
