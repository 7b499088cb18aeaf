"""Slice features for distribution distances (Frechet, MMD): a small encoder the pipeline trains on real slices.

No ImageNet Inception is used: its features say little about 32x32 medical slices and it would need a
download. Instead a small CNN learns, from real training slices, to predict which label classes a slice
contains and where along Z it lies; its penultimate layer is the feature space. A user can supply a
pretrained TorchScript extractor instead (`load_torchscript_extractor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gem3d.errors import MissingFileError, UnreadableFileError
from gem3d.lineage import sha256_file

FEATURE_DIM = 64
ENCODER_CHANNELS = (16, 32, 64)


class SliceEncoder(nn.Module):
    """Three stride-2 conv blocks (GroupNorm, SiLU), global average pooling and a linear layer to the features."""

    def __init__(self, feature_dim: int = FEATURE_DIM, channels: tuple[int, ...] = ENCODER_CHANNELS) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        previous = 1
        for width in channels:
            blocks += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            previous = width
        self.convs = nn.Sequential(*blocks)
        self.project = nn.Sequential(nn.Linear(previous, feature_dim), nn.SiLU())

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        pooled = self.convs(slices).mean(dim=(-2, -1))  # (N, 1, H, W) -> (N, C)
        return self.project(pooled)  # (N, D)


@dataclass
class FeatureExtractor:
    """A module mapping `(N, 1, H, W)` slices in `[-1, 1]` to `(N, D)` features, and a text saying what it is."""

    module: nn.Module
    description: str

    def extract(self, slices: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Features of `(N, 1, H, W)` slices as a float64 `(N, D)` array."""
        slices = torch.as_tensor(np.asarray(slices), dtype=torch.float32)
        if slices.ndim != 4 or slices.shape[1] != 1:
            raise ValueError(f"expected (N, 1, H, W) slices, got {tuple(slices.shape)}")
        self.module.eval()
        with torch.no_grad():
            chunks = [self.module(chunk) for chunk in torch.split(slices, batch_size)]
        features = torch.cat(chunks).double().numpy()
        if features.ndim != 2 or features.shape[0] != slices.shape[0]:
            raise ValueError(f"extractor returned {features.shape}, expected ({slices.shape[0]}, D)")
        return features

    def describe(self) -> str:
        """Which features were used: architecture, training data, steps and dimension."""
        return self.description


def volume_slices(volumes: list[np.ndarray]) -> np.ndarray:
    """All axial slices of `(Z, H, W)` volumes stacked as `(N, 1, H, W)` float32."""
    return np.concatenate([np.asarray(v, dtype=np.float32)[:, None] for v in volumes])


def slice_targets(label_volume: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-slice targets `(Z, num_classes)`: presence of each foreground class 1..K-1, then relative position z/Z."""
    label_volume = np.asarray(label_volume)
    num_slices = label_volume.shape[0]
    presence = np.stack([(label_volume == k).any(axis=(1, 2)) for k in range(1, num_classes)], axis=1)
    position = np.arange(num_slices, dtype=np.float32)[:, None] / num_slices
    return np.concatenate([presence.astype(np.float32).reshape(num_slices, -1), position], axis=1)


def train_feature_extractor(
    slices: np.ndarray,
    targets: np.ndarray,
    seed: int,
    steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    feature_dim: int = FEATURE_DIM,
    data_note: str = "real training slices",
) -> FeatureExtractor:
    """Train a `SliceEncoder` plus a linear head to predict `slice_targets` (BCE on presence, MSE on position).

    `slices`: `(N, 1, H, W)` in `[-1, 1]`; `targets`: `(N, K)` whose last column is the relative position and
    the others are 0/1 class presence. Deterministic for a seed on CPU; the global RNG is left untouched.
    """
    slices_t = torch.as_tensor(np.asarray(slices), dtype=torch.float32)
    targets_t = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    if slices_t.ndim != 4 or slices_t.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) slices, got {tuple(slices_t.shape)}")
    if targets_t.ndim != 2 or targets_t.shape[0] != slices_t.shape[0] or targets_t.shape[1] < 1:
        raise ValueError(f"targets must be (N, K >= 1) with N = {slices_t.shape[0]}, got {tuple(targets_t.shape)}")
    num_presence = targets_t.shape[1] - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = SliceEncoder(feature_dim)
        head = nn.Linear(feature_dim, targets_t.shape[1])
        optimiser = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=learning_rate)
        order = np.random.default_rng(seed)
        encoder.train()
        for _ in range(steps):
            index = torch.from_numpy(order.integers(0, len(slices_t), size=min(batch_size, len(slices_t))))
            prediction = head(encoder(slices_t[index]))  # (B, K)
            target = targets_t[index]
            loss = F.mse_loss(prediction[:, -1], target[:, -1])
            if num_presence:
                loss = loss + F.binary_cross_entropy_with_logits(prediction[:, :-1], target[:, :-1])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    description = (
        f"Penultimate-layer features (dimension {feature_dim}) of a small CNN slice encoder "
        f"({len(ENCODER_CHANNELS)} stride-2 conv layers with {', '.join(map(str, ENCODER_CHANNELS))} channels, "
        f"GroupNorm, SiLU, global average pooling, linear {ENCODER_CHANNELS[-1]}->{feature_dim}), trained by this "
        f"pipeline for {steps} AdamW steps (batch {batch_size}, seed {seed}) on {len(slices_t)} {data_note} "
        f"({slices_t.shape[-2]}x{slices_t.shape[-1]} pixels) to predict the presence of each of {num_presence} "
        "label classes and the slice's relative position z/Z. Not an ImageNet Inception network: values are "
        "comparable only between runs that use the same extractor."
    )
    return FeatureExtractor(module=encoder.eval(), description=description)


def load_torchscript_extractor(path: str | Path) -> FeatureExtractor:
    """A user-supplied pretrained extractor: a TorchScript file taking `(N, 1, H, W)` and returning `(N, D)`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "TorchScript feature extractor not found")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise UnreadableFileError(path, f"not a loadable TorchScript module: {error}") from error
    description = (
        f"Features from the user-supplied TorchScript extractor {path.name} (sha256 {sha256_file(path)[:16]}), "
        f"applied to single axial slices (N, 1, H, W) in [-1, 1]."
    )
    return FeatureExtractor(module=module, description=description)
