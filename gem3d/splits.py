"""Train / val / test splits: stable per case as a dataset grows, and inherited by every synthetic volume.

A case's split is decided by a hash of its id (and the split seed), not by its place in the current case
list, so adding cases never moves an earlier one; the dataset's own split, when it has one, still wins. A
synthetic volume takes the split of every real case it derives from: it is training data only when all its
sources are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from gem3d.seeds import derive_seed
from gem3d.store import MANIFEST, read_manifest

SPLITS = ("train", "val", "test")
TRAINING_SPLITS = ("train", "val")
"""Splits whose real cases (and whatever derives only from them) may be used to train a segmenter."""

_HASH_RANGE = 2**63


def split_of_case(case_id: str, fractions: tuple[float, float, float], seed: int) -> str:
    """The split of one case from a hash of its id: the same whatever other cases the dataset holds."""
    position = derive_seed("split", seed, case_id) / _HASH_RANGE  # uniform in [0, 1)
    train, val, _ = fractions
    if position < train:
        return "train"
    return "val" if position < train + val else "test"


def assign_splits(
    case_ids: Iterable[str],
    fractions: tuple[float, float, float],
    seed: int,
    given: Mapping[str, str | None] | None = None,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Splits of `case_ids`: the dataset's own (`given`) first, then an earlier assignment (`previous`, e.g. the
    store's manifest), then the hash of the case id.

    A small dataset could hash every case into one split; while no split is given or kept, cases are
    moved from the largest split so that, with three or more cases, val and test hold at least one each.
    """
    given = given or {}
    previous = previous or {}
    splits: dict[str, str] = {}
    free: list[str] = []
    for case_id in sorted(case_ids):
        if given.get(case_id) in SPLITS:
            splits[case_id] = str(given[case_id])
        elif previous.get(case_id) in SPLITS:
            splits[case_id] = previous[case_id]
        else:
            splits[case_id] = split_of_case(case_id, fractions, seed)
            free.append(case_id)
    _ensure_held_out(splits, free, seed)
    return splits


def _ensure_held_out(splits: dict[str, str], free: list[str], seed: int) -> None:
    """Give val and test one case each when they are empty, taken from train among the newly hashed cases.

    Only newly hashed cases move, and the one that moves is the one ranked first by a hash of its id, so
    the result does not depend on the order cases arrive in.
    """
    if len(splits) < 3:
        return
    for wanted in ("test", "val"):
        if wanted in splits.values():
            continue
        donors = [case_id for case_id in free if splits[case_id] == "train"]
        if len(donors) < 2:
            continue
        chosen = min(donors, key=lambda case_id: derive_seed("held-out", seed, wanted, case_id))
        splits[chosen] = wanted
        free.remove(chosen)


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
