"""Usefulness check: does adding synthetic volumes to real training data improve a segmentation model?

A MONAI 2D UNet is trained slice-wise (2D on axial slices, chosen for CPU speed; the paper uses nnU-Net) with a
fixed step budget and seed, and scored with MONAI's `DiceMetric` on whole test volumes (slice predictions
stacked back to 3D). Both arms (real, real + synthetic) get the same steps, batch size, initial weights and
seed; only the pool of training slices differs. Volumes may be `VolumeSet`s over a Zarr store: training reads
the drawn slices per step and Dice reads one test volume at a time, so memory does not grow with the store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from torch import nn
from torch.utils.data import Dataset

from gem3d.volume_sets import Pair, VolumeSet, as_volume_set, joined_slices, read_slices

UNET_CHANNELS = (16, 32, 64)
UNET_STRIDES = (2, 2)
_DIVISOR = int(np.prod(UNET_STRIDES))


class SliceSegmenter(nn.Module):
    """A MONAI 2D UNet on `(N, 1, H, W)` slices; pads H and W up to a multiple of the UNet's downsampling."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.unet = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=num_classes,
            channels=UNET_CHANNELS,
            strides=UNET_STRIDES,
            num_res_units=1,
        )

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        height, width = slices.shape[-2:]
        pad_h, pad_w = -height % _DIVISOR, -width % _DIVISOR
        logits = self.unet(F.pad(slices, (0, pad_w, 0, pad_h), value=-1.0))
        return logits[..., :height, :width]  # (N, num_classes, H, W)


def train_segmenter(
    pairs: VolumeSet | Sequence[Pair] | Dataset,
    num_classes: int,
    steps: int,
    seed: int,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
) -> SliceSegmenter:
    """Train a `SliceSegmenter` for `steps` Adam steps on slices drawn uniformly from all volumes (Dice + CE).

    `pairs`: volumes (a `VolumeSet` or `(image, label)` pairs) or directly a slice dataset with
    `gem3d.data.SliceDataset` items. Slices are read per step, so a stored set is never loaded whole.
    Deterministic for a seed on CPU; the global RNG is left untouched.
    """
    slices = pairs if isinstance(pairs, Dataset) else as_volume_set(pairs).slices()
    if len(slices) == 0:
        raise ValueError("no training volumes given")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SliceSegmenter(num_classes)
        optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        draw = np.random.default_rng(seed)
        model.train()
        for _ in range(steps):
            batch = read_slices(slices, draw.integers(0, len(slices), size=min(batch_size, len(slices))))
            labels = batch["label"]  # (B, 1, H, W)
            if labels.max() >= num_classes or labels.min() < 0:
                found = f"{int(labels.min())}..{int(labels.max())}"
                raise ValueError(f"labels must lie in [0, {num_classes}), found {found}")
            loss = loss_fn(model(batch["image"]), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def predict_volume(model: nn.Module, image: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Label volume `(Z, H, W)` predicted slice by slice (argmax over classes)."""
    slices = torch.from_numpy(np.asarray(image, dtype=np.float32))[:, None]  # (Z, H, W) -> (Z, 1, H, W)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in torch.split(slices, batch_size)])
    return logits.argmax(dim=1).numpy()


def dice_per_label(model: nn.Module, test_volumes: VolumeSet | Sequence[Pair], num_classes: int) -> dict[int, float]:
    """Mean 3D Dice per foreground label over test volumes (read one at a time); volumes where a label is absent
    from the truth are skipped for that label (NaN when it is absent from all of them)."""
    metric = DiceMetric(include_background=False, reduction="mean_batch", num_classes=num_classes)
    for image, label in as_volume_set(test_volumes).volumes():
        prediction = torch.from_numpy(predict_volume(model, image))[None, None]  # (1, 1, Z, H, W)
        truth = torch.from_numpy(np.asarray(label, dtype=np.int64))[None, None]
        metric(prediction, truth)
    per_label = metric.aggregate().numpy()  # (num_classes - 1,)
    return {label: float(per_label[label - 1]) for label in range(1, num_classes)}


def compare_real_vs_augmented(
    real_train: VolumeSet | Sequence[Pair],
    synthetic: VolumeSet | Sequence[Pair],
    test: VolumeSet | Sequence[Pair],
    num_classes: int,
    steps: int,
    seed: int,
    scarce_fraction: float = 0.25,
    synthetic_sources: Sequence[Collection[int]] | None = None,
) -> list[dict[str, Any]]:
    """Dice per label for real-only vs real+synthetic training, with all real cases and with a scarce subset.

    The scarce subset is `max(1, round(scarce_fraction * len(real_train)))` real cases drawn with `seed`. Its
    synthetic partner set is the synthetic volumes derived only from those cases when `synthetic_sources` (for
    each synthetic volume, the indices into `real_train` of every case it came from) is given, else the same
    fraction of the synthetic volumes drawn with `seed`. Every arm trains with the same `steps` and `seed`.
    Volumes are read per slice (training) and one at a time (Dice), never all at once.
    Rows: `{setting: "real" | "real+synthetic", amount: "all" | "scarce", label, dice, n_real, n_synthetic}`.
    """
    real_train, synthetic, test = as_volume_set(real_train), as_volume_set(synthetic), as_volume_set(test)
    if not 0 < scarce_fraction <= 1:
        raise ValueError(f"scarce_fraction must be in (0, 1], got {scarce_fraction}")
    if synthetic_sources is not None and len(synthetic_sources) != len(synthetic):
        raise ValueError(f"synthetic_sources has {len(synthetic_sources)} entries for {len(synthetic)} volumes")
    draw = np.random.default_rng(seed)
    scarce_real = sorted(draw.permutation(len(real_train))[: max(1, round(scarce_fraction * len(real_train)))])
    if synthetic_sources is not None:
        chosen = {int(i) for i in scarce_real}
        scarce_synthetic = [i for i, sources in enumerate(synthetic_sources) if {int(s) for s in sources} <= chosen]
    else:
        count = round(scarce_fraction * len(synthetic))
        scarce_synthetic = sorted(draw.permutation(len(synthetic))[:count])
    subsets = {
        "all": (real_train, synthetic),
        "scarce": (real_train.subset(scarce_real), synthetic.subset(scarce_synthetic)),
    }
    rows: list[dict[str, Any]] = []
    for amount, (real, extra) in subsets.items():
        for setting, pool in (("real", joined_slices(real)), ("real+synthetic", joined_slices(real, extra))):
            scores = dice_per_label(train_segmenter(pool, num_classes, steps, seed), test, num_classes)
            rows += [
                {
                    "setting": setting,
                    "amount": amount,
                    "label": label,
                    "dice": dice,
                    "n_real": len(real),
                    "n_synthetic": len(extra) if setting == "real+synthetic" else 0,
                }
                for label, dice in scores.items()
            ]
    return rows
