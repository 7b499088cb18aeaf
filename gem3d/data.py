"""Torch datasets over the Zarr store: windows of consecutive slices (denoiser) and single slices (slice model).

Every item is a function of `(seed, epoch, index)` alone: the random choices (case, start slice, informed
slice) come from a generator seeded by those three numbers, so an item is the same in any DataLoader worker,
in any process and after a restart. Case arrays are opened lazily in the process that reads them, and only
the chunks covering the requested slices are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from gem3d.store import open_case_arrays, open_case_outline


def item_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's random choices: the same for the same `(seed, epoch, index)` everywhere."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


class _CaseArrays:
    """Lazily opened `(Z, H, W)` arrays of a store's cases; never pickled open (each worker opens its own)."""

    def __init__(self, store: str | Path, case_ids: Sequence[str]) -> None:
        self.store = Path(store)
        self._open: dict[str, tuple[zarr.Array, zarr.Array]] = {}
        self._outlines: dict[str, zarr.Array] = {}
        self.num_slices = {case_id: self.arrays(case_id)[0].shape[0] for case_id in case_ids}
        self._open.clear()

    def arrays(self, case_id: str) -> tuple[zarr.Array, zarr.Array]:
        if case_id not in self._open:
            self._open[case_id] = open_case_arrays(self.store, case_id)
        return self._open[case_id]

    def outline(self, case_id: str) -> zarr.Array:
        if case_id not in self._outlines:
            self._outlines[case_id] = open_case_outline(self.store, case_id)
        return self._outlines[case_id]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}, "_outlines": {}}


class WindowDataset(Dataset):
    """Windows of `window_length` consecutive slices with their mask slices and one informed slice inside them.

    Without `samples_per_epoch`, item i is a window of case i (one per case, e.g. for validation); with it,
    the epoch has that many windows of randomly drawn cases. Cases shorter than the window are skipped.
    Item: image (L, 1, H, W) float32, label and anatomy outline (L, H, W) int64, informed_slice (1, H, W) (the
    window's slice at `informed_offset`), informed_offset, start_slice, case_id, num_slices.
    """

    def __init__(
        self,
        store: str | Path,
        case_ids: Sequence[str],
        window_length: int,
        seed: int,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.cases = _CaseArrays(store, case_ids)
        self.case_ids = [case_id for case_id in case_ids if self.cases.num_slices[case_id] >= window_length]
        if not self.case_ids:
            raise ValueError(f"no case among {len(case_ids)} has at least {window_length} slices")
        self.window_length = window_length
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw different windows in the next epoch (the same ones again for the same epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.case_ids) if self.samples_per_epoch is None else self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        generator = item_generator(self.seed, self.epoch, index)
        if self.samples_per_epoch is None:
            case_id = self.case_ids[index]
        else:
            case_id = self.case_ids[int(generator.integers(len(self.case_ids)))]
        num_slices = self.cases.num_slices[case_id]
        start_slice = int(generator.integers(num_slices - self.window_length + 1))
        informed_offset = int(generator.integers(self.window_length))
        return self.window_item(case_id, start_slice, informed_offset)

    def window_item(self, case_id: str, start_slice: int, informed_offset: int) -> dict:
        """The item for a given window and informed slice position (reads only the window's chunks)."""
        image_array, label_array = self.cases.arrays(case_id)
        stop = start_slice + self.window_length
        image = torch.from_numpy(np.ascontiguousarray(image_array[start_slice:stop], dtype=np.float32))
        label = torch.from_numpy(label_array[start_slice:stop].astype(np.int64))
        outline = torch.from_numpy(self.cases.outline(case_id)[start_slice:stop].astype(np.int64))
        image = image[:, None]  # (L, H, W) -> (L, 1, H, W)
        return {
            "image": image,
            "label": label,
            "outline": outline,
            "informed_slice": image[informed_offset].clone(),
            "informed_offset": informed_offset,
            "start_slice": start_slice,
            "case_id": case_id,
            "num_slices": self.cases.num_slices[case_id],
        }


class SliceDataset(Dataset):
    """Single slices with their relative position `z / Z`, for the position-conditioned slice model.

    Without `samples_per_epoch`, the items are all slices of all cases in order; with it, the epoch has that
    many slices drawn at random. Item: image (1, H, W) float32, label (H, W) int64, position float32 tensor,
    slice_index, case_id, num_slices.
    """

    def __init__(
        self, store: str | Path, case_ids: Sequence[str], seed: int, samples_per_epoch: int | None = None
    ) -> None:
        if not case_ids:
            raise ValueError("SliceDataset needs at least one case")
        self.cases = _CaseArrays(store, case_ids)
        self.case_ids = list(case_ids)
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0
        self._first_slice = np.cumsum([0] + [self.cases.num_slices[case_id] for case_id in self.case_ids])

    def set_epoch(self, epoch: int) -> None:
        """Draw different slices in the next epoch (random mode only)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self._first_slice[-1]) if self.samples_per_epoch is None else self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        if self.samples_per_epoch is None:
            flat = index
        else:
            flat = int(item_generator(self.seed, self.epoch, index).integers(self._first_slice[-1]))
        case_index = int(np.searchsorted(self._first_slice, flat, side="right")) - 1
        case_id = self.case_ids[case_index]
        return self.slice_item(case_id, flat - int(self._first_slice[case_index]))

    def slice_item(self, case_id: str, slice_index: int) -> dict:
        """The item for one slice of one case (reads only its chunk)."""
        image_array, label_array = self.cases.arrays(case_id)
        num_slices = self.cases.num_slices[case_id]
        image = torch.from_numpy(np.asarray(image_array[slice_index], dtype=np.float32))
        return {
            "image": image[None],  # (H, W) -> (1, H, W)
            "label": torch.from_numpy(label_array[slice_index].astype(np.int64)),
            "position": torch.tensor(slice_index / num_slices, dtype=torch.float32),
            "slice_index": slice_index,
            "case_id": case_id,
            "num_slices": num_slices,
        }
