"""Train / val / test splits: stable per case as a dataset grows, and inherited by every synthetic volume.

A case's split is decided by a hash of its id (and the split seed), not by its place in the current case
list, so adding cases never moves an earlier one; the dataset's own split, when it has one, still wins. A
synthetic volume takes the split of every real case it derives from: it is training data only when all its
sources are.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from gem3d.seeds import derive_seed
from gem3d.store import MANIFEST, read_manifest

SPLITS = ("train", "val", "test")
TRAINING_SPLITS = ("train", "val")
"""Splits whose real cases (and whatever derives only from them) may be used to train a segmenter."""

_HASH_RANGE = 2**63


def hash_position(case_id: str, seed: int) -> float:
    """Where a case falls in `[0, 1)` by a hash of its id: its rank among new cases, whatever else the dataset holds."""
    return derive_seed("split", seed, case_id) / _HASH_RANGE


def split_targets(count: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Cases per split for `count` cases (largest remainder); with three or more, every split holds one."""
    exact = [fraction * count for fraction in fractions]
    sizes = [int(value) for value in exact]
    by_remainder = sorted(range(3), key=lambda index: exact[index] - sizes[index], reverse=True)
    for index in by_remainder[: count - sum(sizes)]:
        sizes[index] += 1
    if count >= 3:
        for index in (1, 2):
            if sizes[index] == 0:
                sizes[index] = 1
                sizes[max(range(3), key=lambda other: sizes[other])] -= 1
    return dict(zip(SPLITS, sizes, strict=True))


def assign_splits(
    case_ids: Iterable[str],
    fractions: tuple[float, float, float],
    seed: int,
    given: Mapping[str, str | None] | None = None,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Splits of `case_ids`: the dataset's own (`given`) first, then an earlier assignment (`previous`: the
    store's manifest, our `splits_final.json`), and new cases fill what each split lacks of its target.

    New cases are taken in the order of their hash position (train first, then val, then test), so the result
    does not depend on the order cases are listed in, and earlier cases never move when the dataset grows.
    """
    given = given or {}
    previous = previous or {}
    splits: dict[str, str] = {}
    new: list[str] = []
    for case_id in sorted(case_ids):
        if given.get(case_id) in SPLITS:
            splits[case_id] = str(given[case_id])
        elif previous.get(case_id) in SPLITS:
            splits[case_id] = previous[case_id]
        else:
            new.append(case_id)
    new.sort(key=lambda case_id: hash_position(case_id, seed))
    targets = split_targets(len(splits) + len(new), fractions)
    kept = Counter(splits.values())
    lacking = {split: max(targets[split] - kept[split], 0) for split in SPLITS}
    queue = iter(new)
    for split in SPLITS:
        for case_id in itertools.islice(queue, lacking[split]):
            splits[case_id] = split
    splits.update({case_id: "train" for case_id in queue})
    return splits


def cases_of_split(manifest: pd.DataFrame, *splits: str) -> list[str]:
    """Sorted case ids of a manifest whose split is one of `splits`."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected some of {SPLITS}")
    return sorted(manifest.loc[manifest["split"].isin(splits), "case_id"].astype(str))


def store_cases_of_split(store: str | Path, *splits: str) -> list[str]:
    """Sorted case ids of the store's manifest whose split is one of `splits`."""
    return cases_of_split(read_manifest(store), *splits)


def store_splits(store: str | Path) -> dict[str, str]:
    """Case id -> split of the store's manifest, or nothing when the store has none yet (first preprocessing)."""
    if not (Path(store) / MANIFEST).exists():
        return {}
    manifest = read_manifest(store)
    return dict(zip(manifest["case_id"].astype(str), manifest["split"].astype(str), strict=True))


def derived_split(source_case_ids: Iterable[str], splits: Mapping[str, str]) -> str:
    """The split of a volume derived from these real cases: test if any is test, else val if any is val.

    A source missing from `splits` (a case no longer in the store), or no recorded source at all, counts as
    test, so that nothing of unknown origin becomes training data.
    """
    found = {splits.get(case_id, "test") for case_id in source_case_ids} or {"test"}
    for split in ("test", "val"):
        if split in found:
            return split
    return "train"
