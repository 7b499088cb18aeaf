"""Slice features for distribution distances (Frechet, MMD): a small encoder the pipeline trains on real slices.

No ImageNet Inception is used: its features say little about 32x32 medical slices and it would need a
download. Instead a small CNN learns, from real training slices, to predict which label classes a slice
contains and where along Z it lies; its penultimate layer is the feature space. A user can supply a
pretrained TorchScript extractor instead (`load_torchscript_extractor`). `train_feature_extractor_on` trains
from a slice dataset that reads the store per step, so no store is ever loaded whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from gem3d.errors import MissingFileError, UnreadableFileError
from gem3d.lineage import sha256_file
from gem3d.volume_sets import read_slices

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
    training = _Training(len(slices_t), targets_t.shape[1], seed, steps, batch_size, learning_rate, feature_dim)
    encoder = _fit(lambda index: (slices_t[index], targets_t[index]), training)
    return FeatureExtractor(encoder, _description(training, tuple(slices_t.shape[-2:]), data_note))


def train_feature_extractor_on(
    slices: Dataset,
    num_classes: int,
    seed: int,
    steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    feature_dim: int = FEATURE_DIM,
    data_note: str = "real training slices",
) -> FeatureExtractor:
    """As `train_feature_extractor`, on a slice dataset (`gem3d.data.SliceDataset` items) read per step.

    Only one batch of slices is in memory at a time, whatever the size of the store; the draws are those
    the array version makes on the same slices concatenated in dataset order, so both train the same network.
    """
    if len(slices) == 0:
        raise ValueError("no slices to train the feature extractor on")

    def batch(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        items = read_slices(slices, index.numpy())
        labels = items["label"][:, 0]  # (B, 1, H, W) -> (B, H, W)
        presence = [(labels == k).flatten(1).any(dim=1).float() for k in range(1, num_classes)]
        return items["image"], torch.stack([*presence, items["position"]], dim=1)  # (B, 1, H, W), (B, K)

    training = _Training(len(slices), num_classes, seed, steps, batch_size, learning_rate, feature_dim)
    first = slices[0]["image"]
    return FeatureExtractor(_fit(batch, training), _description(training, tuple(first.shape[-2:]), data_note))


@dataclass(frozen=True)
class _Training:
    """The budget and shape of one extractor training run."""

    num_slices: int
    num_targets: int
    seed: int
    steps: int
    batch_size: int
    learning_rate: float
    feature_dim: int


def _fit(batch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], training: _Training) -> SliceEncoder:
    """The training loop: `batch(indices)` gives `(B, 1, H, W)` slices and `(B, K)` targets of drawn slices."""
    num_presence = training.num_targets - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        encoder = SliceEncoder(training.feature_dim)
        head = nn.Linear(training.feature_dim, training.num_targets)
        optimiser = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=training.learning_rate)
        order = np.random.default_rng(training.seed)
        encoder.train()
        for _ in range(training.steps):
            size = min(training.batch_size, training.num_slices)
            slices, target = batch(torch.from_numpy(order.integers(0, training.num_slices, size=size)))
            prediction = head(encoder(slices))  # (B, K)
            loss = F.mse_loss(prediction[:, -1], target[:, -1])
            if num_presence:
                loss = loss + F.binary_cross_entropy_with_logits(prediction[:, :-1], target[:, :-1])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return encoder.eval()


def _description(training: _Training, size: tuple[int, int], data_note: str) -> str:
    return (
        f"Penultimate-layer features (dimension {training.feature_dim}) of a small CNN slice encoder "
        f"({len(ENCODER_CHANNELS)} stride-2 conv layers with {', '.join(map(str, ENCODER_CHANNELS))} channels, "
        f"GroupNorm, SiLU, global average pooling, linear {ENCODER_CHANNELS[-1]}->{training.feature_dim}), "
        f"trained by this pipeline for {training.steps} AdamW steps (batch {training.batch_size}, seed "
        f"{training.seed}) on {training.num_slices} {data_note} ({size[0]}x{size[1]} pixels) to predict the "
        f"presence of each of {training.num_targets - 1} label classes and the slice's relative position z/Z. "
        "Not an ImageNet Inception network: values are comparable only between runs that use the same extractor."
    )


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
