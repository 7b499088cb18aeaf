"""Sets of labelled `(Z, H, W)` volumes the evaluation trains on and scores: stored ones read on demand, or arrays.

A Zarr store (real or synthetic; they share one layout) can hold far more than memory, so a `StoredVolumes`
never loads it: `volumes()` yields one volume at a time and `slices()` is a dataset that reads one axial
slice per item. `ArrayVolumes` offers the same interface over arrays already in memory (small tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from gem3d.data import SliceDataset
from gem3d.store import read_case

Pair = tuple[np.ndarray, np.ndarray]  # (image (Z, H, W) in [-1, 1], label (Z, H, W) integer classes)


class VolumeSet(Protocol):
    """Labelled volumes in a fixed order, read one at a time."""

    def __len__(self) -> int: ...

    def subset(self, indices: Sequence[int]) -> VolumeSet: ...

    def volumes(self) -> Iterator[Pair]: ...

    def slices(self) -> Dataset: ...


@dataclass(frozen=True)
class StoredVolumes:
    """Volumes `ids` of a Zarr store, never all in memory: read per volume or per slice."""

    store: Path
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> StoredVolumes:
        """The volumes at `indices`, in that order."""
        return StoredVolumes(self.store, tuple(self.ids[index] for index in indices))

    def volumes(self) -> Iterator[Pair]:
        """Each `(image, label)` in turn; only one is held at a time."""
        for volume_id in self.ids:
            yield read_case(self.store, volume_id)

    def slices(self) -> Dataset:
        """Every axial slice in volume order, read from the store per item (`gem3d.data.SliceDataset` items)."""
        return SliceDataset(self.store, list(self.ids), seed=0) if self.ids else _NoSlices()


class _NoSlices(Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> dict:
        raise IndexError(index)


class _ArraySlices(Dataset):
    """Every axial slice of in-memory pairs, with the items of `gem3d.data.SliceDataset`."""

    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.pairs = list(pairs)
        self._first_slice = np.cumsum([0] + [len(image) for image, _ in self.pairs])

    def __len__(self) -> int:
        return int(self._first_slice[-1])

    def __getitem__(self, index: int) -> dict:
        volume = int(np.searchsorted(self._first_slice, index, side="right")) - 1
        image, label = self.pairs[volume]
        slice_index = index - int(self._first_slice[volume])
        return {
            "image": torch.from_numpy(np.asarray(image[slice_index], dtype=np.float32))[None],  # (1, H, W)
            "label": torch.from_numpy(np.asarray(label[slice_index], dtype=np.int64)),  # (H, W)
            "position": torch.tensor(slice_index / len(image), dtype=torch.float32),
        }


@dataclass(frozen=True)
class ArrayVolumes:
    """Volumes already in memory, behind the `VolumeSet` interface."""

    pairs: tuple[Pair, ...]

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, indices: Sequence[int]) -> ArrayVolumes:
        """The volumes at `indices`, in that order."""
        return ArrayVolumes(tuple(self.pairs[index] for index in indices))

    def volumes(self) -> Iterator[Pair]:
        """Each `(image, label)` in turn."""
        yield from self.pairs

    def slices(self) -> Dataset:
        """Every axial slice in volume order."""
        return _ArraySlices(self.pairs)


def as_volume_set(volumes: VolumeSet | Sequence[Pair]) -> VolumeSet:
    """A `VolumeSet` as is; a sequence of `(image, label)` pairs wrapped as `ArrayVolumes`."""
    if isinstance(volumes, StoredVolumes | ArrayVolumes):
        return volumes
    return ArrayVolumes(tuple(volumes))


def joined_slices(*sets: VolumeSet) -> Dataset:
    """The slices of several sets one after another (global index = position in the concatenation)."""
    parts = [part for part in (volume_set.slices() for volume_set in sets) if len(part)]
    return ConcatDataset(parts) if parts else _NoSlices()


def read_slices(dataset: Dataset, indices: np.ndarray) -> dict[str, torch.Tensor]:
    """Items `indices` of a slice dataset stacked: image `(B, 1, H, W)`, label `(B, 1, H, W)`, position `(B,)`."""
    items = [dataset[int(index)] for index in indices]
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.stack([item["label"] for item in items])[:, None],  # (B, H, W) -> (B, 1, H, W)
        "position": torch.stack([torch.as_tensor(item["position"], dtype=torch.float32) for item in items]),
    }
