"""Window and slice datasets over a real Zarr store: shapes, exact slices, chunk reads, determinism, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gem3d.data import SliceDataset, WindowDataset
from gem3d.splits import store_cases_of_split
from gem3d.store import SLICES_PER_CHUNK, read_window
from tests.training.conftest import write_store

TRAIN = ["case_a", "case_b", "case_c"]


def test_store_cases_of_split_reads_the_manifest(small_store: Path) -> None:
    assert store_cases_of_split(small_store, "train") == TRAIN
    assert store_cases_of_split(small_store, "val") == ["case_v"]
    assert store_cases_of_split(small_store, "test") == ["case_t"]
    assert store_cases_of_split(small_store, "val", "test") == ["case_t", "case_v"]


@pytest.mark.parametrize("window_length", [2, 3, 6, 9])
def test_window_items_have_the_shapes_and_exact_slices_of_the_store(small_store: Path, window_length: int) -> None:
    dataset = WindowDataset(small_store, TRAIN, window_length, seed=1, samples_per_epoch=12)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (window_length, 1, 16, 16) and item["image"].dtype == torch.float32
        assert item["label"].shape == (window_length, 16, 16) and item["label"].dtype == torch.int64
        assert item["informed_slice"].shape == (1, 16, 16)
        image, label = read_window(small_store, item["case_id"], item["start_slice"], window_length)
        assert np.array_equal(item["image"][:, 0].numpy(), image)
        assert np.array_equal(item["label"].numpy(), label)
        assert 0 <= item["informed_offset"] < window_length
        assert torch.equal(item["informed_slice"], item["image"][item["informed_offset"]])
        assert item["start_slice"] + window_length <= item["num_slices"]


def test_cases_shorter_than_the_window_are_skipped(small_store: Path) -> None:
    dataset = WindowDataset(small_store, TRAIN, window_length=9, seed=0)
    assert dataset.case_ids == ["case_b", "case_c"]
    assert len(dataset) == 2
    assert [dataset[i]["case_id"] for i in range(2)] == ["case_b", "case_c"]
    with pytest.raises(ValueError, match="at least 13 slices"):
        WindowDataset(small_store, TRAIN, window_length=13, seed=0)


def _chunk_files(store: Path, case_id: str) -> dict[int, list[Path]]:
    """Chunk files of a case's image and label arrays by their first slice's chunk index."""
    files: dict[int, list[Path]] = {}
    for array in ("image", "label"):
        for path in (store / "cases" / case_id / array / "c").iterdir():
            files.setdefault(int(path.name), []).extend(p for p in path.rglob("*") if p.is_file())
    return files


def test_a_window_reads_only_the_chunks_it_covers(tmp_path: Path) -> None:
    chunk_slices = SLICES_PER_CHUNK
    store = write_store(tmp_path / "store.zarr", {"long": (5 * chunk_slices, "train")})

    def dataset() -> WindowDataset:
        return WindowDataset(store, ["long"], window_length=3, seed=5, samples_per_epoch=40)

    starts = [dataset()[i]["start_slice"] for i in range(40)]
    index = next(i for i, start in enumerate(starts) if start // chunk_slices == (start + 2) // chunk_slices)
    expected = dataset()[index]
    chunk = expected["start_slice"] // chunk_slices
    outside = next(i for i, start in enumerate(starts) if start // chunk_slices != chunk)
    files = _chunk_files(store, "long")
    assert sorted(files) == [0, 1, 2, 3, 4]
    for other, paths in files.items():
        if other != chunk:
            for path in paths:
                path.write_bytes(b"not a zstd frame")
    again = dataset()[index]
    assert torch.equal(again["image"], expected["image"]) and torch.equal(again["label"], expected["label"])
    with pytest.raises(RuntimeError, match="[Zz]std"):  # a window elsewhere does read a corrupted chunk
        dataset()[outside]


def _draws(dataset: WindowDataset) -> list[tuple]:
    return [
        (item["case_id"], item["start_slice"], item["informed_offset"])
        for item in (dataset[i] for i in range(len(dataset)))
    ]


def test_items_are_a_function_of_seed_epoch_and_index(small_store: Path) -> None:
    first = _draws(WindowDataset(small_store, TRAIN, 4, seed=7, samples_per_epoch=16))
    assert first == _draws(WindowDataset(small_store, TRAIN, 4, seed=7, samples_per_epoch=16))
    assert first != _draws(WindowDataset(small_store, TRAIN, 4, seed=8, samples_per_epoch=16))
    assert len({case for case, _, _ in first}) == 3  # random cases, not one
    next_epoch = WindowDataset(small_store, TRAIN, 4, seed=7, samples_per_epoch=16)
    next_epoch.set_epoch(1)
    assert _draws(next_epoch) != first
    next_epoch.set_epoch(0)
    assert _draws(next_epoch) == first


def test_dataloader_workers_give_the_same_items_as_direct_reads(small_store: Path) -> None:
    dataset = WindowDataset(small_store, TRAIN, 4, seed=2, samples_per_epoch=8)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [tuple(batch["image"].shape) for batch in batches] == [(2, 4, 1, 16, 16)] * 4
    for index in range(8):
        batch = batches[index // 2]
        item = dataset[index]
        assert torch.equal(batch["image"][index % 2], item["image"])
        assert batch["case_id"][index % 2] == item["case_id"]
        assert int(batch["start_slice"][index % 2]) == item["start_slice"]


def test_slice_dataset_enumerates_every_slice_with_its_relative_position(small_store: Path) -> None:
    dataset = SliceDataset(small_store, ["case_a", "case_b"], seed=0)
    assert len(dataset) == 6 + 9
    items = [dataset[i] for i in range(len(dataset))]
    assert [(item["case_id"], item["slice_index"]) for item in items[5:7]] == [("case_a", 5), ("case_b", 0)]
    for item in items:
        assert item["image"].shape == (1, 16, 16) and item["label"].shape == (16, 16)
        assert float(item["position"]) == pytest.approx(item["slice_index"] / item["num_slices"])
        image, _ = read_window(small_store, item["case_id"], item["slice_index"], 1)
        assert np.array_equal(item["image"].numpy(), image)


def test_slice_dataset_random_mode_is_deterministic_for_a_seed(small_store: Path) -> None:
    def draws(seed: int) -> list[tuple]:
        dataset = SliceDataset(small_store, TRAIN, seed=seed, samples_per_epoch=12)
        return [(dataset[i]["case_id"], dataset[i]["slice_index"]) for i in range(12)]

    assert draws(4) == draws(4)
    assert draws(4) != draws(5)
