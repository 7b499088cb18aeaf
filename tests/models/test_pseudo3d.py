"""Slice-axis layers: identity at initialisation, and once trained they mix slices of one window only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gem3d.models import pseudo3d
from gem3d.models.pseudo3d import TemporalAttention, TemporalConv


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


LAYERS = {
    "conv": lambda: TemporalConv(8),
    "attention": lambda: TemporalAttention(8, head_channels=4),
}


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("num_slices", [1, 3, 8])
def test_temporal_layers_are_exact_identity_at_init(kind: str, num_slices: int) -> None:
    x = torch.randn(2 * num_slices, 8, 5, 6)
    assert torch.equal(LAYERS[kind]()(x, num_slices), x)


def test_temporal_conv_mixes_only_neighbouring_slices_at_the_same_pixel() -> None:
    layer = _perturbed(TemporalConv(4))
    x = torch.randn(2 * 5, 4, 6, 6)  # two windows of five slices
    changed = x.clone()
    changed[0, :, 2, 3] += torch.randn(4)
    delta = (layer(changed, 5) - layer(x, 5)).abs().amax(dim=1)  # (B*L, H, W)
    assert delta[1, 2, 3] > 1e-3  # the next slice, same pixel
    assert delta[3, 2, 3] == 0  # two slices away: outside kernel 3
    delta[:2, 2, 3] = 0
    assert delta.max() == 0  # no other pixel, no other window


def test_temporal_attention_mixes_every_slice_of_its_window_only() -> None:
    layer = _perturbed(TemporalAttention(8, head_channels=4))
    x = torch.randn(2 * 5, 8, 4, 4)
    changed = x.clone()
    changed[0, :, 1, 2] += torch.randn(8)  # varies over channels: LayerNorm removes a constant
    delta = (layer(changed, 5) - layer(x, 5)).abs().amax(dim=1)
    assert delta[4, 1, 2] > 1e-4  # the last slice of the same window
    delta[:5, 1, 2] = 0
    assert delta.max() == 0  # other pixels and the second window untouched


@pytest.mark.parametrize("kind", LAYERS)
def test_window_length_is_given_per_call(kind: str) -> None:
    layer = _perturbed(LAYERS[kind]())
    x = torch.randn(12, 8, 3, 3)
    as_two_windows = layer(x, 6)
    assert torch.allclose(as_two_windows, torch.cat([layer(x[:6], 6), layer(x[6:], 6)]), atol=1e-6)
    assert not torch.allclose(layer(x, 4), as_two_windows, atol=1e-3)


def test_chunked_attention_matches_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    query, key, value = torch.randn(3, 10, 2, 5, 4).unbind(0)
    bias = torch.randn(2, 5, 5)
    monkeypatch.setattr(pseudo3d, "MAX_ATTENTION_BATCH", 3)
    chunked = pseudo3d.chunked_attention(query, key, value, bias)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    assert torch.allclose(chunked, expected, atol=1e-6)


def test_temporal_conv_rejects_even_kernel() -> None:
    with pytest.raises(ValueError, match="odd"):
        TemporalConv(4, kernel_size=2)
