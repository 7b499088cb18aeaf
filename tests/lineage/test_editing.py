"""Mask edits: deterministic per seed, faithful to their recorded values, replayable, validated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gem3d.config import EditConfig
from gem3d.editing import (
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
    replay_edits,
    rotation_matrix,
    validate_mask,
)
from gem3d.errors import InvalidEditError
from gem3d.lineage import sha256_array

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
    edits = default_augmentation(EditConfig(shift_voxels=(2, 6)))
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
    edits = [*default_augmentation(EditConfig(shift_voxels=(2, 6))), PasteLesion(source_case_id="b", labels=(3,))]
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


def test_default_augmentation_builds_the_papers_edits():
    config = EditConfig(max_rotation_degrees=3, flip_probability=0.25, shift_labels=(1, 4), shift_voxels=(5, 9))
    assert default_augmentation(config) == [
        Rotate(max_degrees=3),
        FlipLeftRight(probability=0.25),
        ShiftLabels(labels=(1, 4), min_voxels=5, max_voxels=9),
    ]
    assert [edit.kind for edit in default_augmentation(EditConfig(shift_labels=()))] == ["rotate", "flip"]
