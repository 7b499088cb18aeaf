"""Splits: a case keeps its split as the dataset grows, the dataset's own split wins, and a synthetic volume
takes the split of every real case it derives from."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from gem3d.splits import SPLITS, assign_splits, cases_of_split, derived_split, store_cases_of_split, store_splits
from gem3d.store import MANIFEST, write_table_atomic

FRACTIONS = (0.7, 0.15, 0.15)


def _cases(count: int, start: int = 0) -> list[str]:
    return [f"case_{index:03d}" for index in range(start, start + count)]


@pytest.mark.parametrize("first", [3, 4, 5, 8, 20])
@pytest.mark.parametrize("added", [1, 5, 30])
def test_adding_cases_never_moves_an_earlier_case(first: int, added: int) -> None:
    earlier = assign_splits(_cases(first), FRACTIONS, seed=0)
    grown = assign_splits(_cases(first + added), FRACTIONS, seed=0, previous=earlier)
    assert {case_id: grown[case_id] for case_id in earlier} == earlier


@pytest.mark.parametrize(("count", "expected"), [(3, (1, 1, 1)), (6, (4, 1, 1)), (8, (6, 1, 1)), (20, (14, 3, 3))])
def test_small_datasets_get_the_split_sizes_of_their_fractions(count: int, expected: tuple[int, int, int]) -> None:
    """A hash alone can put 3 of 6 cases in val; a pipeline trained on 2 cases would be a different experiment."""
    for seed in range(5):
        counts = Counter(assign_splits(_cases(count), FRACTIONS, seed=seed).values())
        assert tuple(counts[split] for split in SPLITS) == expected


def test_new_cases_fill_what_each_split_lacks() -> None:
    earlier = assign_splits(_cases(10), FRACTIONS, seed=0)
    grown = assign_splits(_cases(20), FRACTIONS, seed=0, previous=earlier)
    assert Counter(grown.values()) == Counter({"train": 14, "val": 3, "test": 3})


def test_fractions_are_respected_for_many_cases() -> None:
    splits = assign_splits(_cases(3000), FRACTIONS, seed=0)
    counts = Counter(splits.values())
    for split, fraction in zip(SPLITS, FRACTIONS, strict=True):
        assert counts[split] / len(splits) == pytest.approx(fraction, abs=0.03)


@pytest.mark.parametrize("count", range(3, 11))
@pytest.mark.parametrize("seed", range(10))
def test_small_datasets_still_get_train_validation_and_test_cases(count: int, seed: int) -> None:
    splits = assign_splits(_cases(count), FRACTIONS, seed=seed)
    assert set(splits.values()) == set(SPLITS)


def test_the_datasets_own_split_wins_over_the_hash_and_an_earlier_assignment() -> None:
    hashed = assign_splits(_cases(30), FRACTIONS, seed=0)
    trained = [case_id for case_id, split in hashed.items() if split == "train"][:2]
    given = {trained[0]: "test", trained[1]: None}
    splits = assign_splits(_cases(30), FRACTIONS, seed=0, given=given, previous={trained[0]: "train"})
    assert splits[trained[0]] == "test" and splits[trained[1]] == "train"


def test_splits_depend_on_the_seed_and_not_on_the_order_of_cases() -> None:
    cases = _cases(40)
    first = assign_splits(cases, FRACTIONS, seed=0)
    assert first == assign_splits(list(reversed(cases)), FRACTIONS, seed=0)
    assert first != assign_splits(cases, FRACTIONS, seed=1)


def test_an_earlier_assignment_of_a_case_no_longer_in_the_dataset_is_ignored() -> None:
    splits = assign_splits(_cases(5), FRACTIONS, seed=0, previous={"gone": "test"})
    assert sorted(splits) == _cases(5)


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ({"a", "b"}, "train"),
        ({"a", "v"}, "val"),
        ({"a", "t"}, "test"),
        ({"v", "t"}, "test"),
        ({"a", "unknown"}, "test"),
        (set(), "test"),
    ],
)
def test_a_derived_volume_takes_the_most_held_out_split_of_its_sources(sources: set[str], expected: str) -> None:
    splits = {"a": "train", "b": "train", "v": "val", "t": "test"}
    assert derived_split(sources, splits) == expected


def test_store_splits_read_the_manifest_and_are_empty_before_the_first_one(tmp_path) -> None:
    store = tmp_path / "store.zarr"
    store.mkdir()
    assert store_splits(store) == {}
    manifest = pd.DataFrame({"case_id": ["c", "a", "b"], "split": ["test", "train", "val"]})
    write_table_atomic(store / MANIFEST, manifest)
    assert store_splits(store) == {"a": "train", "b": "val", "c": "test"}
    assert store_cases_of_split(store, "train", "val") == ["a", "b"]
    with pytest.raises(ValueError, match="unknown split"):
        cases_of_split(manifest, "training")
