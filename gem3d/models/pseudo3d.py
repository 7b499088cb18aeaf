"""Pseudo-3D layers of volumetric tuning: convolution and attention along the slice axis.

Both act on 2D features `(B*L, C, H, W)` whose batch axis folds `B` windows of `L` slices; `L` is given at
call time (any window length works). Both are the identity at initialisation, so inserting them into a
trained 2D UNet leaves its function unchanged until the new parameters are trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# CUDA attention kernels fail for batch sizes above 65535 (pytorch/pytorch#146704); B*H*W can exceed it.
MAX_ATTENTION_BATCH = 2**15


def chunked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`scaled_dot_product_attention` over (N, heads, tokens, d), in batch chunks the CUDA kernels accept."""
    chunks = zip(*(tensor.split(MAX_ATTENTION_BATCH) for tensor in (query, key, value)), strict=True)
    return torch.cat([F.scaled_dot_product_attention(q, k, v, attn_mask=bias) for q, k, v in chunks])


class TemporalConv(nn.Module):
    """1D convolution over the slice axis at every pixel, identity at initialisation.

    Parametrised as `x + conv(x)` with a zero-initialised convolution: the same function family as the
    paper's Dirac-initialised convolution (weight = Dirac + learned change), but exactly the identity on
    every backend (a Dirac kernel is not exact under TF32 or bf16 convolutions).
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the slice count, got {kernel_size}")
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """Mix each pixel's features with those of its neighbouring slices in the same window."""
        height, width = x.shape[-2:]
        # (B*L, C, H, W) -> (B*H*W, C, L)
        columns = rearrange(x, "(b l) c h w -> (b h w) c l", l=num_slices)
        columns = columns + self.conv(columns)
        # (B*H*W, C, L) -> (B*L, C, H, W)
        return rearrange(columns, "(b h w) c l -> (b l) c h w", h=height, w=width)


class RelativePositionBias(nn.Module):
    """Per-head attention bias from the signed log-distance between slices; defined for any length."""

    def __init__(self, num_heads: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, num_heads))

    def forward(self, num_slices: int) -> torch.Tensor:
        """Bias of shape (heads, L, L) added to the attention logits."""
        weight = self.mlp[0].weight
        position = torch.arange(num_slices, device=weight.device, dtype=weight.dtype)
        distance = position[None, :] - position[:, None]  # (L_query, L_key)
        distance = torch.sign(distance) * torch.log1p(distance.abs())
        bias = self.mlp(distance[..., None])  # (L, L, heads)
        return rearrange(bias, "i j heads -> heads i j")


class TemporalAttention(nn.Module):
    """Self-attention over the slice axis at every pixel, residual with a zero-initialised output.

    Pre-norm (LayerNorm over channels), a relative slice-position bias, no feed-forward: the block is
    exactly the identity at initialisation.
    """

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        if channels % self.num_heads != 0:
            raise ValueError(f"channels {channels} not divisible into {self.num_heads} heads")
        self.norm = nn.LayerNorm(channels)
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.position_bias = RelativePositionBias(self.num_heads)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """Let every slice of a window attend to the others at the same pixel."""
        height, width = x.shape[-2:]
        # (B*L, C, H, W) -> (B*H*W, L, C)
        tokens = rearrange(x, "(b l) c h w -> (b h w) l c", l=num_slices)
        qkv = self.to_qkv(self.norm(tokens))
        # (B*H*W, L, 3C) -> 3 x (B*H*W, heads, L, d)
        query, key, value = rearrange(qkv, "n l (three heads d) -> three n heads l d", three=3, heads=self.num_heads)
        bias = self.position_bias(num_slices).to(query.dtype)
        attended = chunked_attention(query, key, value, bias)
        tokens = tokens + self.to_out(rearrange(attended, "n heads l d -> n l (heads d)"))
        # (B*H*W, L, C) -> (B*L, C, H, W)
        return rearrange(tokens, "(b h w) l c -> (b l) c h w", h=height, w=width)
