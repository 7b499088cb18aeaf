"""Synthesis plans: deterministic, with ids derived from every input, for each use of GEM-3D."""

from __future__ import annotations

import numpy as np
import pytest

from gem3d.editing import RemoveLabel, Rotate, default_augmentation
from gem3d.io.phantoms import write_phantom_dataset
from gem3d.lineage import sha256_array
from gem3d.sampling.informed import most_foreground_slice, relative_slice
from gem3d.store import read_case, read_manifest
from gem3d.synthesis import (
    InformedChoice,
    plan_counterfactual,
    plan_deenhancement,
    plan_enhancement,
    plan_test_regeneration,
)
from tests.synthesis import CONFIG, build_store

CHECKPOINT = "a" * 64
GENERATOR = "b" * 64
CONFIG_HASH = "c" * 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("plans"))


@pytest.fixture(scope="module")
def cases(store):
    return sorted(read_manifest(store)["case_id"])


def _enhance(store, cases, setting="ic", **overrides):
    arguments = {"per_case": 2, "checkpoint_sha256": CHECKPOINT, "config_hash": CONFIG_HASH, "base_seed": 0}
    arguments |= {"generator_sha256": GENERATOR} if setting.startswith("ig") else {}
    arguments |= overrides
    return plan_enhancement(store, cases, setting, config=CONFIG, **arguments)


def test_enhancement_plans_are_deterministic_with_stable_unique_ids(store, cases):
    first, second = _enhance(store, cases), _enhance(store, cases)
    assert first == second
    assert len(first) == 2 * len(cases)
    assert len({plan.synthetic_id for plan in first}) == len(first)
    assert all(plan.synthetic_id.startswith("syn-") for plan in first)


@pytest.mark.parametrize(
    "overrides",
    [{"base_seed": 1}, {"checkpoint_sha256": "d" * 64}, {"config_hash": "e" * 16}],
)
def test_every_plan_id_changes_when_an_input_changes(store, cases, overrides):
    before = {plan.synthetic_id for plan in _enhance(store, cases)}
    after = {plan.synthetic_id for plan in _enhance(store, cases, **overrides)}
    assert not before & after


def test_id_changes_with_each_field_of_a_plan(store, cases):
    plan = _enhance(store, cases)[0]
    inputs = plan.model_dump(exclude={"synthetic_id"})
    changes = {
        "source_case_id": "case_999",
        "source_mask_sha256": "f" * 64,
        "setting": "test",
        "variant": 7,
        "seed": plan.seed + 1,
        "start_slice": plan.start_slice + 1,
        "edits": (RemoveLabel(labels=(2,)),),
        "informed": InformedChoice(mode="chosen", case_id="case_003", slice_index=0),
        "checkpoint_sha256": "d" * 64,
        "config_hash": "e" * 16,
    }
    assert set(changes) == set(inputs)
    remade = type(plan).create(**inputs)
    assert remade.synthetic_id == plan.synthetic_id
    for name, value in changes.items():
        assert type(plan).create(**(inputs | {name: value})).synthetic_id != plan.synthetic_id, name
    rotated = type(plan).create(**(inputs | {"edits": (Rotate(max_degrees=1.0),)}))
    assert rotated.synthetic_id != type(plan).create(**(inputs | {"edits": (Rotate(max_degrees=2.0),)})).synthetic_id


def test_ic_draws_the_informed_slice_from_the_training_pool_at_the_same_relative_position(store, cases):
    manifest = read_manifest(store)
    train = set(manifest.loc[manifest["split"] == "train", "case_id"])
    for plan in _enhance(store, cases, per_case=3):
        assert plan.informed.mode == "chosen" and plan.informed.case_id in train
        assert plan.informed.case_id != plan.source_case_id
        target = read_case(store, plan.source_case_id)[1].shape[0]
        source = read_case(store, plan.informed.case_id)[0].shape[0]
        assert plan.informed.slice_index == relative_slice(plan.start_slice, target, source)
        assert 0 <= plan.start_slice < target
        assert plan.edits == ()
    starts = {plan.start_slice for plan in _enhance(store, cases, per_case=3)}
    assert len(starts) > 1


def test_ma_settings_add_the_configured_augmentation_and_ig_uses_the_generator(store, cases):
    icma = _enhance(store, cases, "icma")
    assert all(plan.edits == tuple(default_augmentation(CONFIG.edits)) for plan in icma)
    igma = _enhance(store, cases, "igma")
    assert all(plan.informed == InformedChoice(mode="generated", generator_sha256=GENERATOR) for plan in igma)
    assert all(plan.edits for plan in igma)
    with pytest.raises(ValueError, match="generator"):
        _enhance(store, cases, "ig", generator_sha256=None)
    with pytest.raises(ValueError, match="setting"):
        _enhance(store, cases, "xx")


def test_mask_hash_of_the_source_is_recorded(store, cases):
    plan = _enhance(store, cases[:1])[0]
    assert plan.source_mask_sha256 == sha256_array(read_case(store, plan.source_case_id)[1])


def test_counterfactual_with_a_fixed_slice_starts_at_its_relative_position(store):
    [plan] = plan_counterfactual(store, "case_000", "case_003:4", ["remove:2"], CONFIG, CHECKPOINT, CONFIG_HASH)
    assert plan.setting == "counterfactual" and plan.source_case_id == "case_000"
    assert plan.informed == InformedChoice(mode="fixed", case_id="case_003", slice_index=4)
    assert plan.edits == (RemoveLabel(labels=(2,)),)
    reference_slices = read_case(store, "case_003")[0].shape[0]
    target = read_case(store, "case_000")[1].shape[0]
    assert plan.start_slice == min(round(4 / reference_slices * target), target - 1)


def test_counterfactual_from_a_case_or_own_case_uses_the_chosen_relative_slice(store):
    other = plan_counterfactual(store, "case_000", "case_003", [], CONFIG, CHECKPOINT, CONFIG_HASH, variants=2)
    own = plan_counterfactual(store, "case_000", None, [], CONFIG, CHECKPOINT, CONFIG_HASH)
    assert len(other) == 2 and {plan.informed.case_id for plan in other} == {"case_003"}
    assert own[0].informed.case_id == "case_000" and own[0].informed.slice_index == own[0].start_slice
    for plan in other:
        assert plan.informed.mode == "chosen"
        assert plan.informed.slice_index == relative_slice(plan.start_slice, 10, 10)


def test_deenhancement_uses_the_reference_for_every_case(store, cases):
    plans = plan_deenhancement(store, cases, "case_002", CONFIG, CHECKPOINT, CONFIG_HASH)
    expected = most_foreground_slice(read_case(store, "case_002")[1])
    assert [plan.source_case_id for plan in plans] == cases
    for plan in plans:
        assert plan.setting == "deenhance" and plan.edits == ()
        assert plan.informed == InformedChoice(mode="fixed", case_id="case_002", slice_index=expected)
    several = plan_deenhancement(store, cases * 5, ["case_002:3", "case_000:5"], CONFIG, CHECKPOINT, CONFIG_HASH)
    assert {plan.informed.case_id for plan in several} <= {"case_002", "case_000"}


def test_test_regeneration_uses_the_case_s_own_mask_and_slice(store, cases):
    plans = plan_test_regeneration(store, cases, CONFIG, CHECKPOINT, CONFIG_HASH)
    for plan in plans:
        assert plan.setting == "test"
        assert plan.informed == InformedChoice(mode="chosen", case_id=plan.source_case_id, slice_index=plan.start_slice)


def test_upward_only_sampling_starts_every_plan_at_slice_zero(store, cases):
    upward = CONFIG.model_copy(update={"sampling": CONFIG.sampling.model_copy(update={"directions": "up"})})
    plans = plan_test_regeneration(store, cases, upward, CHECKPOINT, CONFIG_HASH, variants=2)
    assert {plan.start_slice for plan in plans} == {0}


def _labelled_slices(store, case_id):
    _, label = read_case(store, case_id)
    return {int(index) for index in np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1))}


def _starting(sampling_update: dict):
    return CONFIG.model_copy(update={"sampling": CONFIG.sampling.model_copy(update=sampling_update)})


def test_labelled_start_draws_only_slices_that_show_the_labels(store, cases):
    labelled = _starting({"start_slice": "labelled"})
    plans = plan_test_regeneration(store, cases, labelled, CHECKPOINT, CONFIG_HASH, variants=8)
    plans += plan_enhancement(store, cases, "ic", 8, labelled, CHECKPOINT, CONFIG_HASH)
    for plan in plans:
        assert plan.start_slice in _labelled_slices(store, plan.source_case_id)
        if plan.setting == "test":  # its own slice: the informed slice shows the labels too
            assert plan.informed.slice_index == plan.start_slice
    assert len({plan.start_slice for plan in plans}) > 2, "still drawn at random among the labelled slices"


def test_random_start_reaches_unlabelled_slices_too(store, cases):
    assert all(len(_labelled_slices(store, case)) < read_case(store, case)[1].shape[0] for case in cases)
    plans = plan_test_regeneration(store, cases, CONFIG, CHECKPOINT, CONFIG_HASH, variants=16)
    assert any(plan.start_slice not in _labelled_slices(store, plan.source_case_id) for plan in plans)


@pytest.fixture(scope="module")
def brain_store(tmp_path_factory):
    """Brain phantoms: oedema alone at the tumour's ends, all three labels through its core."""
    root = tmp_path_factory.mktemp("brain-plans")
    return build_store(root, raw=write_phantom_dataset(root / "raw", "brain", 4, shape=(40, 40, 20)))


def _slices_with_most_labels(store, case_id):
    _, label = read_case(store, case_id)
    kinds = np.array([np.unique(slice_[slice_ > 0]).size for slice_ in label])
    return {int(index) for index in np.flatnonzero(kinds == kinds.max())}


def test_most_labels_start_draws_only_slices_showing_the_most_distinct_labels(brain_store):
    store, cases = brain_store, sorted(read_manifest(brain_store)["case_id"])
    assert any(_slices_with_most_labels(store, case) < _labelled_slices(store, case) for case in cases)
    richest = _starting({"start_slice": "most_labels"})
    plans = plan_test_regeneration(store, cases, richest, CHECKPOINT, CONFIG_HASH, variants=8)
    plans += plan_enhancement(store, cases, "ic", 8, richest, CHECKPOINT, CONFIG_HASH)
    for plan in plans:
        assert plan.start_slice in _slices_with_most_labels(store, plan.source_case_id)
    labelled = plan_test_regeneration(store, cases, _starting({"start_slice": "labelled"}), CHECKPOINT, CONFIG_HASH, 8)
    assert any(plan.start_slice not in _slices_with_most_labels(store, plan.source_case_id) for plan in labelled)
