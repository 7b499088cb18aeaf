"""Synthesis plans: one reviewable record per volume to generate, its id derived from all its inputs.

Planning reads only masks and shapes, so plans are cheap and deterministic: enhancement (ic, ic+ma, ig, ig+ma),
counterfactuals, de-enhancement and test-split regeneration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from einops import rearrange
from pydantic import BaseModel, ConfigDict

from gem3d.config import Config
from gem3d.editing import Edit, default_augmentation, parse_edit
from gem3d.ingest import recorded_dataset_name
from gem3d.lineage import derive_id, sha256_array
from gem3d.sampling.informed import fixed_slice_index, parse_reference, pick_chosen, relative_slice
from gem3d.seeds import derive_seed, derived_rng
from gem3d.splits import store_cases_of_split
from gem3d.store import open_case_arrays

Setting = Literal["ic", "icma", "ig", "igma", "counterfactual", "deenhance", "test"]
ENHANCEMENT_SETTINGS = ("ic", "icma", "ig", "igma")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InformedChoice(_Frozen):
    """Which informed slice a plan uses: a real slice ("chosen", "fixed") or the slice generator's."""

    mode: Literal["chosen", "generated", "fixed"]
    case_id: str | None = None
    slice_index: int | None = None
    generator_sha256: str | None = None


class SynthesisPlan(_Frozen):
    """One synthetic volume to generate; `synthetic_id` is derived from every other field."""

    synthetic_id: str
    source_case_id: str
    source_mask_sha256: str
    setting: Setting
    variant: int
    seed: int
    start_slice: int
    edits: tuple[Edit, ...] = ()
    informed: InformedChoice
    checkpoint_sha256: str
    config_hash: str

    @classmethod
    def create(cls, **inputs) -> SynthesisPlan:
        """A plan from its inputs, with the id `derive_id("syn", ...)` of all of them."""
        draft = cls(synthetic_id="pending", **inputs)
        return draft.model_copy(
            update={"synthetic_id": derive_id("syn", **draft.model_dump(mode="json", exclude={"synthetic_id"}))}
        )


@dataclass(frozen=True)
class _SourceMask:
    num_slices: int
    sha256: str
    labelled: tuple[int, ...]  # axial slices holding any foreground label
    richest: tuple[int, ...]  # axial slices holding the most distinct foreground labels


def _source_mask(store: str | Path, case_id: str) -> _SourceMask:
    """Slice count, sha256 of the stored label array, its labelled slices and those with the most labels."""
    _, label = open_case_arrays(store, case_id)
    label = label[:]  # (Z, H, W)
    per_slice = rearrange(label, "z h w -> z (h w)")
    labelled = np.flatnonzero(per_slice.any(axis=1))
    kinds = np.array([np.unique(row[row > 0]).size for row in per_slice])
    richest = np.flatnonzero(kinds == kinds.max()) if kinds.max() > 0 else np.array([], dtype=int)
    return _SourceMask(
        label.shape[0],
        sha256_array(label),
        tuple(int(index) for index in labelled),
        tuple(int(index) for index in richest),
    )


def _start_slice(seed: int, mask: _SourceMask, config: Config) -> int:
    """The start slice from the plan's seed: uniform over all slices ("random", the paper's), over the labelled
    ones ("labelled": the informed slice then shows the lesion or organs too) or over those showing the most
    distinct labels ("most_labels": it shows as many organs' contrast as one slice can); 0 when sampling only
    upwards."""
    if config.sampling.directions == "up":
        return 0
    rng = derived_rng(seed, "start_slice")
    candidates = {"labelled": mask.labelled, "most_labels": mask.richest}.get(config.sampling.start_slice, ())
    if candidates:
        return candidates[int(rng.integers(len(candidates)))]
    return int(rng.integers(mask.num_slices))


def plan_enhancement(
    store: str | Path,
    case_ids: Sequence[str],
    setting: Literal["ic", "icma", "ig", "igma"],
    per_case: int,
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
    generator_sha256: str | None = None,
    pool: Sequence[str] | None = None,
) -> list[SynthesisPlan]:
    """`per_case` enhancement plans per case: random start slice; "ma" adds the mask augmentation of the store's
    dataset (`default_augmentation`: its edit profile, overridden by the config);
    "ic" draws the informed case from `pool` (default: the training split), "ig" uses the slice generator."""
    if setting not in ENHANCEMENT_SETTINGS:
        raise ValueError(f"unknown enhancement setting {setting!r}; expected one of {ENHANCEMENT_SETTINGS}")
    if setting.startswith("ig") and not generator_sha256:
        raise ValueError(f"setting {setting!r} needs the slice generator's sha256 (generator_sha256)")
    pool = (
        sorted(pool) if pool is not None else (store_cases_of_split(store, "train") if setting.startswith("ic") else [])
    )
    edits = tuple(default_augmentation(config.edits, recorded_dataset_name(store))) if setting.endswith("ma") else ()
    plans = []
    for case_id in case_ids:
        mask = _source_mask(store, case_id)
        for variant in range(per_case):
            seed = derive_seed(base_seed, setting, case_id, variant)
            start = _start_slice(seed, mask, config)
            if setting.startswith("ic"):
                informed_case, index = pick_chosen(
                    store, pool, case_id, start, mask.num_slices, derive_seed(seed, "pool")
                )
                informed = InformedChoice(mode="chosen", case_id=informed_case, slice_index=index)
            else:
                informed = InformedChoice(mode="generated", generator_sha256=generator_sha256)
            plans.append(
                SynthesisPlan.create(
                    source_case_id=case_id,
                    source_mask_sha256=mask.sha256,
                    setting=setting,
                    variant=variant,
                    seed=seed,
                    start_slice=start,
                    edits=edits,
                    informed=informed,
                    checkpoint_sha256=checkpoint_sha256,
                    config_hash=config_hash,
                )
            )
    return plans


def _mapped_start(reference_slice: int, reference_slices: int, num_slices: int, config: Config) -> int:
    """The target slice at the reference slice's relative position (0 when sampling only upwards)."""
    if config.sampling.directions == "up":
        return 0
    return min(round(reference_slice / reference_slices * num_slices), num_slices - 1)


def plan_counterfactual(
    store: str | Path,
    mask_from: str,
    slice_from: str | None,
    edits: Sequence[Edit | str],
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
    variants: int = 1,
) -> list[SynthesisPlan]:
    """Counterfactuals: the (edited) mask of `mask_from` with the informed slice of `slice_from`.

    `slice_from` "CASE:SLICE" fixes the slice (the start slice is its relative position); "CASE" takes that
    case's slice at the relative position of a random start slice; None takes `mask_from`'s own slice.
    Edits are `Edit` models or their CLI text ("remove:1,2,3", ...).
    """
    declared = tuple(parse_edit(edit) if isinstance(edit, str) else edit for edit in edits)
    reference_case, reference_slice = parse_reference(slice_from) if slice_from else (mask_from, None)
    mask = _source_mask(store, mask_from)
    reference_slices = open_case_arrays(store, reference_case)[0].shape[0]
    plans = []
    for variant in range(variants):
        seed = derive_seed(base_seed, "counterfactual", mask_from, slice_from, variant)
        if reference_slice is None:
            start = _start_slice(seed, mask, config)
            index = relative_slice(start, mask.num_slices, reference_slices)
            informed = InformedChoice(mode="chosen", case_id=reference_case, slice_index=index)
        else:
            start = _mapped_start(reference_slice, reference_slices, mask.num_slices, config)
            informed = InformedChoice(mode="fixed", case_id=reference_case, slice_index=reference_slice)
        plans.append(
            SynthesisPlan.create(
                source_case_id=mask_from,
                source_mask_sha256=mask.sha256,
                setting="counterfactual",
                variant=variant,
                seed=seed,
                start_slice=start,
                edits=declared,
                informed=informed,
                checkpoint_sha256=checkpoint_sha256,
                config_hash=config_hash,
            )
        )
    return plans


def plan_deenhancement(
    store: str | Path,
    case_ids: Sequence[str],
    reference: str | Sequence[str],
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
) -> list[SynthesisPlan]:
    """De-enhancement: every case regenerated from its own mask with one of the fixed reference slices
    ("CASE:SLICE" or "CASE", the latter meaning its slice with the most foreground), drawn per case."""
    texts = [reference] if isinstance(reference, str) else list(reference)
    if not texts:
        raise ValueError("de-enhancement needs at least one reference slice")
    references = []
    for text in texts:
        case_id, index = parse_reference(text)
        index = fixed_slice_index(store, case_id) if index is None else index
        references.append((case_id, index, open_case_arrays(store, case_id)[0].shape[0]))
    plans = []
    for case_id in case_ids:
        mask = _source_mask(store, case_id)
        seed = derive_seed(base_seed, "deenhance", case_id)
        reference_case, reference_slice, reference_slices = references[
            int(derived_rng(seed, "reference").integers(len(references)))
        ]
        plans.append(
            SynthesisPlan.create(
                source_case_id=case_id,
                source_mask_sha256=mask.sha256,
                setting="deenhance",
                variant=0,
                seed=seed,
                start_slice=_mapped_start(reference_slice, reference_slices, mask.num_slices, config),
                informed=InformedChoice(mode="fixed", case_id=reference_case, slice_index=reference_slice),
                checkpoint_sha256=checkpoint_sha256,
                config_hash=config_hash,
            )
        )
    return plans


def plan_test_regeneration(
    store: str | Path,
    case_ids: Sequence[str],
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
    variants: int = 1,
) -> list[SynthesisPlan]:
    """Fidelity plans: each (test) case from its own mask and its own slice at a random start slice."""
    plans = []
    for case_id in case_ids:
        mask = _source_mask(store, case_id)
        for variant in range(variants):
            seed = derive_seed(base_seed, "test", case_id, variant)
            start = _start_slice(seed, mask, config)
            plans.append(
                SynthesisPlan.create(
                    source_case_id=case_id,
                    source_mask_sha256=mask.sha256,
                    setting="test",
                    variant=variant,
                    seed=seed,
                    start_slice=start,
                    informed=InformedChoice(mode="chosen", case_id=case_id, slice_index=start),
                    checkpoint_sha256=checkpoint_sha256,
                    config_hash=config_hash,
                )
            )
    return plans
