"""Mask edits: deterministic per seed, faithful to their recorded values, replayable, validated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gem3d.config import Config, DataConfig, EditConfig
from gem3d.editing import (
    EDIT_PROFILES,
    AppliedEdit,
    FlipLeftRight,
    PasteLesion,
    RemoveLabel,
    Rotate,
    ShiftLabels,
    apply_edits,
    default_augmentation,
    format_edit,
    parse_edit,
    profile_for_dataset,
    replay_edits,
    rotation_matrix,
    validate_mask,
)
from gem3d.errors import InvalidEditError
from gem3d.ingest import build_manifest, process_case, recorded_dataset_name
from gem3d.io.layouts import discover_dataset
from gem3d.io.phantoms import MIN_SHAPE, write_phantom_dataset
from gem3d.lineage import sha256_array
from gem3d.store import MANIFEST, init_store, list_cases, publish_case, write_table_atomic
from gem3d.synthesis.plans import plan_enhancement
from tests.builders import write_msd_dataset

SHAPE = (16, 32, 32)


def _ball(centre: tuple[float, float, float], radius: float, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True)) <= radius**2


@pytest.fixture
def body() -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    return (((grid[0] - 7.5) / 7) ** 2 + ((grid[1] - 15.5) / 14) ** 2 + ((grid[2] - 15.5) / 14) ** 2 <= 1).astype(
        np.uint8
    )


@pytest.fixture
def tumour() -> np.ndarray:
    """A BraTS-like mask: nested tumour labels 2 > 1 > 3, off-centre towards the top right."""
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((8, 9, 23), 4)] = 2
    label[_ball((8, 9, 23), 2.5)] = 1
    label[_ball((8, 9, 23), 1)] = 3
    return label


def _counts(label: np.ndarray) -> list[int]:
    return np.bincount(label.ravel(), minlength=4)[1:4].tolist()


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def test_same_seed_same_edits_and_different_seeds_differ(tumour, body):
    edits = default_augmentation(EditConfig(shift_voxels=(2, 6)), "BrainTumour")
    first, first_records = apply_edits(tumour, edits, seed=3, body_mask=body)
    again, again_records = apply_edits(tumour, edits, seed=3, body_mask=body)
    other, other_records = apply_edits(tumour, edits, seed=4, body_mask=body)
    assert np.array_equal(first, again)
    assert [r.to_dict() for r in first_records] == [r.to_dict() for r in again_records]
    assert first_records[0].sampled["degrees"] != other_records[0].sampled["degrees"]


def test_rotation_keeps_label_values_and_records_angles_within_limit(tumour):
    for seed in range(10):
        rotated, (record,) = apply_edits(tumour, [Rotate(max_degrees=2.5)], seed=seed)
        assert set(np.unique(rotated)) <= set(np.unique(tumour))
        assert len(record.sampled["degrees"]) == 3
        assert all(abs(angle) <= 2.5 for angle in record.sampled["degrees"])
    assert np.array_equal(apply_edits(tumour, [Rotate(max_degrees=0)], seed=0)[0], tumour)


def test_rotation_applies_the_recorded_angles():
    bar = np.zeros(SHAPE, np.uint8)
    bar[7:10, 14:17, 4:28] = 1  # a bar along W through the centre
    rotated, (record,) = apply_edits(bar, [Rotate(max_degrees=20)], seed=1)
    assert max(abs(angle) for angle in record.sampled["degrees"]) > 5
    points = np.argwhere(rotated) - _centroid(rotated)
    direction = np.linalg.svd(points, full_matrices=False)[2][0]
    expected = rotation_matrix(record.sampled["degrees"]) @ np.array([0.0, 0.0, 1.0])
    assert abs(direction @ expected) > np.cos(np.deg2rad(2))


def test_flip_mirrors_the_left_right_axis(tumour):
    flipped, (record,) = apply_edits(tumour, [FlipLeftRight(probability=1)], seed=0)
    assert record.sampled == {"flipped": True}
    assert np.array_equal(flipped, tumour[:, :, ::-1])
    kept, (record,) = apply_edits(tumour, [FlipLeftRight(probability=0)], seed=0)
    assert record.sampled == {"flipped": False} and np.array_equal(kept, tumour)
    outcomes = {apply_edits(tumour, [FlipLeftRight()], seed=seed)[1][0].sampled["flipped"] for seed in range(20)}
    assert outcomes == {True, False}


def test_shift_moves_lesion_towards_body_centre_by_recorded_distance(tumour, body):
    centre = _centroid(body)[1:]
    before = _centroid(tumour > 0)
    for seed in range(6):
        shifted, (record,) = apply_edits(tumour, [ShiftLabels(min_voxels=2, max_voxels=6)], seed, body_mask=body)
        distance, shift = record.sampled["distance_voxels"], np.array(record.sampled["shift"])
        assert 2 <= distance <= 6
        assert shift[0] == 0 and abs(np.linalg.norm(shift) - distance) <= 0.75
        assert np.allclose(_centroid(shifted > 0) - before, shift)
        assert np.linalg.norm(centre - _centroid(shifted > 0)[1:]) < np.linalg.norm(centre - before[1:]) - 1
        assert _counts(shifted) == _counts(tumour) and record.sampled["clipped_voxels"] == 0


def test_shift_clips_at_the_border_and_records_it():
    label = np.zeros(SHAPE, np.uint8)
    label[6:10, 14:18, 20:32] = 2
    body = np.zeros(SHAPE, np.uint8)
    body[:, :, 24:32] = 1  # centre at W = 27.5, lesion centroid at 25.5: shift by 2 along W
    shifted, (record,) = apply_edits(label, [ShiftLabels(labels=(2,), min_voxels=5, max_voxels=5)], 0, body)
    assert record.sampled["shift"] == [0, 0, 2]
    assert record.sampled["clipped_voxels"] == int((label[:, :, 30:] == 2).sum())
    assert (shifted == 2).sum() == (label == 2).sum() - record.sampled["clipped_voxels"]
    assert np.array_equal(shifted[:, :, 22:], label[:, :, 20:30])


def test_body_mask_follows_the_flip_before_a_shift(tumour):
    body = np.zeros(SHAPE, np.uint8)
    body[:, :, 20:32] = 1  # right side: after the flip the body is on the left
    edits = [FlipLeftRight(probability=1), ShiftLabels(min_voxels=3, max_voxels=3)]
    _, records = apply_edits(tumour, edits, seed=0, body_mask=body)
    flipped_lesion_w = _centroid(tumour[:, :, ::-1] > 0)[2]
    assert flipped_lesion_w > 5.5  # flipped body centre is at W = 5.5
    assert records[1].sampled["shift"][2] < 0


def test_remove_fills_with_the_surrounding_label():
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((8, 16, 12), 7)] = 1  # organ
    label[_ball((8, 16, 12), 3)] = 2  # lesion inside the organ
    label[_ball((8, 16, 27), 2)] = 2  # lesion in the background
    healthy, (record,) = apply_edits(label, [RemoveLabel(labels=(2,))], seed=0)
    assert 2 not in healthy
    assert np.all(healthy[_ball((8, 16, 12), 3)] == 1)
    assert np.all(healthy[_ball((8, 16, 27), 2)] == 0)
    assert sorted(record.sampled["fill_labels"]) == [0, 1]
    assert record.sampled["removed_voxels"] == int((label == 2).sum())


def test_paste_copies_lesion_voxels_and_records_source_hash(tumour):
    target = np.zeros(SHAPE, np.uint8)
    target[_ball((8, 16, 16), 10)] = 4
    edit = PasteLesion(source_case_id="case_b", labels=(1, 2, 3), offset=(0, 4, -6))
    pasted, (record,) = apply_edits(target, [edit], seed=0, lesion_sources={"case_b": tumour})
    expected = target.copy()
    moved = np.zeros_like(tumour)
    moved[:, 4:, :-6] = tumour[:, :-4, 6:]
    expected[moved > 0] = moved[moved > 0]
    assert np.array_equal(pasted, expected)
    assert record.sampled["source_sha256"] == sha256_array(tumour)
    assert record.sampled["pasted_voxels"] == int((tumour > 0).sum())
    json.dumps(record.to_dict())


def test_replay_reproduces_apply_exactly_from_json_records(tumour, body):
    edits = [
        *default_augmentation(EditConfig(shift_voxels=(2, 6)), "BrainTumour"),
        PasteLesion(source_case_id="b", labels=(3,)),
    ]
    edits.append(RemoveLabel(labels=(1,)))
    sources = {"b": np.roll(tumour, 8, axis=1)}
    for seed in range(4):
        edited, records = apply_edits(tumour, edits, seed, body_mask=body, lesion_sources=sources)
        restored = [AppliedEdit.from_dict(json.loads(json.dumps(r.to_dict()))) for r in records]
        assert np.array_equal(replay_edits(tumour, restored, lesion_sources=sources), edited)


def test_replay_of_paste_rejects_a_missing_or_different_source(tumour):
    edit = PasteLesion(source_case_id="b", labels=(1,))
    _, records = apply_edits(tumour, [edit], seed=0, lesion_sources={"b": tumour})
    with pytest.raises(InvalidEditError, match="lesion_sources"):
        replay_edits(tumour, records)
    changed = tumour.copy()
    changed[0, 0, 0] = 1
    with pytest.raises(InvalidEditError, match="differs from recorded"):
        replay_edits(tumour, records, lesion_sources={"b": changed})


def test_validate_mask_accepts_a_good_mask_and_rejects_bad_ones(tumour, body):
    validate_mask(tumour, {1, 2, 3}, body_mask=body, lesion_labels=(1, 2, 3), case_id="c1")
    with pytest.raises(InvalidEditError, match="empty") as error:
        validate_mask(np.zeros(SHAPE, np.uint8), {1, 2, 3}, case_id="c1")
    assert error.value.path == "c1"
    bad = tumour.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(InvalidEditError, match=r"labels \[7\]"):
        validate_mask(bad, {1, 2, 3}, case_id="c1")
    outside = np.zeros(SHAPE, np.uint8)
    outside[0:3, 0:3, 0:3] = 2
    with pytest.raises(InvalidEditError, match="outside the body"):
        validate_mask(outside, {1, 2, 3}, body_mask=body, lesion_labels=(2,), case_id="c1")


def test_validate_mask_tolerates_a_small_fraction_outside_the_body(tumour, body):
    nearly = tumour.copy()
    nearly[0, 0, 0] = 2  # one stray voxel of several hundred
    validate_mask(nearly, {1, 2, 3}, body_mask=body, lesion_labels=(1, 2, 3))
    with pytest.raises(InvalidEditError, match="outside"):
        validate_mask(nearly, {1, 2, 3}, body_mask=body, outside_tolerance=0.0)


@pytest.mark.parametrize(
    "text", ["rotate:2.5", "flip:0.5", "flip:1", "shift:1,2,3:20:60", "remove:1,2,3", "paste:case_007:1,2:0,4,-4"]
)
def test_parse_edit_round_trips(text):
    edit = parse_edit(text)
    assert format_edit(edit) == text
    assert parse_edit(format_edit(edit)) == edit


def test_parse_edit_short_forms():
    assert parse_edit("rotate") == Rotate(max_degrees=2.5)
    assert parse_edit("flip") == FlipLeftRight(probability=0.5)
    assert parse_edit("shift:2:5") == ShiftLabels(labels=(2,), min_voxels=5, max_voxels=5)
    assert parse_edit("paste:B:1") == PasteLesion(source_case_id="B", labels=(1,), offset=(0, 0, 0))


@pytest.mark.parametrize(
    "text",
    ["", "spin", "rotate:abc", "rotate:1:2", "flip:2", "shift:1,2,3:60:20", "shift:1,x:2:3", "remove:", "remove:0"]
    + ["paste:X", "paste:X:1:1,2", "shift:1:-3:4"],
)
def test_parse_edit_rejects_garbage(text):
    with pytest.raises(ValueError, match="invalid edit"):
        parse_edit(text)


def test_default_augmentation_builds_the_papers_brain_edits_and_the_config_wins():
    config = EditConfig(max_rotation_degrees=3, shift_voxels=(5, 9))
    assert default_augmentation(config, "BrainTumour") == [
        Rotate(max_degrees=3),
        FlipLeftRight(probability=0.5),
        ShiftLabels(labels=(1, 2, 3), min_voxels=5, max_voxels=9),
    ]
    overridden = EditConfig(flip_probability=0.25, shift_labels=(1, 4), shift_voxels=(5, 9))
    assert default_augmentation(overridden, "AbdomenCT-1K") == [
        Rotate(max_degrees=2.5),
        FlipLeftRight(probability=0.25),
        ShiftLabels(labels=(1, 4), min_voxels=5, max_voxels=9),
    ]
    assert default_augmentation(EditConfig(shift_labels=(), flip_probability=0), "BrainTumour") == [Rotate()]
    assert default_augmentation(EditConfig(profile="brain"), "AbdomenCT-1K") == default_augmentation(
        EditConfig(), "BrainTumour"
    )


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("BrainTumour", "brain"),
        ("Task01_BrainTumour", "brain"),
        ("BraTS2021", "brain"),
        ("gem3d-phantom-brain", "brain"),
        ("AbdomenCT-1K", "abdomen"),
        ("Dataset011_AbdomenCT1K", "abdomen"),
        ("gem3d-phantom-abdomen", "abdomen"),
        ("KiTS19", "rotation_only"),
        ("", "rotation_only"),
        (None, "rotation_only"),
    ],
)
def test_dataset_names_pick_their_edit_profile(name, profile):
    assert profile_for_dataset(name) == profile


def test_every_profile_the_config_can_name_exists():
    names = set(EditConfig.model_fields["profile"].annotation.__args__) - {"auto"}
    assert names == set(EDIT_PROFILES)


def _ingested_store(root: Path, dataset: Path) -> Path:
    """Ingest `dataset` into a real Zarr store as preprocessing does, every case in the training split."""
    info = discover_dataset(dataset)
    store = init_store(root / "store.zarr", {"labels": {str(k): v for k, v in sorted(info.labels.items())}})
    data = DataConfig(window_length=4, in_plane_size=16)
    case_ids = []
    for ref in info.cases:
        outcome = process_case(ref, info, data, store, "data-hash")
        publish_case(store, outcome.case_id, outcome.staged)
        case_ids.append(outcome.case_id)
    write_table_atomic(store / MANIFEST, build_manifest(store, case_ids, dict.fromkeys(case_ids, "train")))
    return store


@pytest.fixture(scope="module")
def dataset_stores(tmp_path_factory) -> dict[str, Path]:
    """Stores ingested from a brain phantom, an abdomen phantom and an MSD dataset named "test"."""
    root = tmp_path_factory.mktemp("edit_profiles")
    datasets = {
        kind: write_phantom_dataset(root / f"{kind}_raw", kind, 2, shape=MIN_SHAPE) for kind in ("brain", "abdomen")
    }
    datasets["unknown"] = write_msd_dataset(root / "unknown_raw", cases=2)
    return {name: _ingested_store(root / name, dataset) for name, dataset in datasets.items()}


def _icma_edit_kinds(store: Path, edits: EditConfig | None = None) -> list[tuple[str, ...]]:
    config = Config(data=DataConfig(window_length=4, in_plane_size=16), edits=edits or EditConfig())
    plans = plan_enhancement(store, list_cases(store), "icma", 1, config, "weights", "config")
    return [tuple(format_edit(edit).split(":")[0] for edit in plan.edits) for plan in plans]


def test_icma_on_brain_phantoms_flips_and_shifts_the_tumour_labels(dataset_stores):
    assert recorded_dataset_name(dataset_stores["brain"]) == "gem3d-phantom-brain"
    config = Config(data=DataConfig(window_length=4, in_plane_size=16))
    [plan, _] = plan_enhancement(dataset_stores["brain"], ["brain_000", "brain_001"], "icma", 1, config, "w", "c")
    assert [format_edit(edit) for edit in plan.edits] == ["rotate:2.5", "flip:0.5", "shift:1,2,3:20:60"]


def test_icma_on_abdomen_phantoms_neither_flips_nor_moves_organs(dataset_stores):
    assert _icma_edit_kinds(dataset_stores["abdomen"]) == [("rotate",), ("rotate",)]


def test_icma_on_an_unknown_dataset_only_rotates(dataset_stores):
    assert recorded_dataset_name(dataset_stores["unknown"]) == "test"
    assert _icma_edit_kinds(dataset_stores["unknown"]) == [("rotate",), ("rotate",)]


def test_icma_config_values_win_over_the_dataset_profile(dataset_stores):
    override = EditConfig(flip_probability=0.5, shift_labels=(4,))
    assert _icma_edit_kinds(dataset_stores["abdomen"], override) == [("rotate", "flip", "shift")] * 2
    assert _icma_edit_kinds(dataset_stores["brain"], EditConfig(flip_probability=0, shift_labels=())) == [
        ("rotate",),
        ("rotate",),
    ]
    assert _icma_edit_kinds(dataset_stores["unknown"], EditConfig(profile="brain")) == [("rotate", "flip", "shift")] * 2
