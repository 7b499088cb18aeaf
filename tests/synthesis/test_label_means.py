"""Label-mean matching to the real informed slice (`sampling.match_label_means`): the function and its wiring."""

from __future__ import annotations

import numpy as np
import pytest

from gem3d.config import config_hash
from gem3d.evaluation.selection import CurrentGeneration
from gem3d.store import read_case
from gem3d.synthesis import plan_enhancement, plan_test_regeneration, synthesize
from gem3d.synthesis.label_means import MIN_SHOWN_VOXELS, match_label_means
from tests.synthesis import CONFIG, build_setup

PLAIN = CONFIG.model_copy(update={"sampling": CONFIG.sampling.model_copy(update={"start_slice": "labelled"})})
MATCHED = PLAIN.model_copy(update={"sampling": PLAIN.sampling.model_copy(update={"match_label_means": True})})


def _two_label_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (6, 12, 12) textured volume with label 1 (mean about 0.1) and label 2 (mean about -0.3)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((6, 12, 12), np.uint8)
    mask[:, 2:6, 2:8] = 1
    mask[:, 7:10, 3:9] = 2
    volume = rng.normal(0.0, 0.05, mask.shape).astype(np.float32)
    volume[mask == 1] += 0.1
    volume[mask == 2] -= 0.3
    return volume, mask


def test_each_shown_label_takes_the_informed_slices_mean_and_keeps_its_texture():
    volume, mask = _two_label_volume()
    informed_label = np.zeros((12, 12), np.uint8)
    informed_label[0:4, 0:5] = 1
    informed_label[6, 0 : MIN_SHOWN_VOXELS - 1] = 2
    informed = np.where(informed_label == 1, 0.6, -0.9).astype(np.float32)
    matched = match_label_means(volume, mask, informed, informed_label)
    assert matched[mask == 1].mean() == pytest.approx(0.6, abs=1e-5)
    deviation = volume[mask == 1] - volume[mask == 1].mean()
    np.testing.assert_allclose(matched[mask == 1] - matched[mask == 1].mean(), deviation, atol=1e-5)
    # label 2 is shown in fewer than MIN_SHOWN_VOXELS voxels and the background is never moved
    np.testing.assert_array_equal(matched[mask != 1], volume[mask != 1])
    informed_label[6, MIN_SHOWN_VOXELS - 1] = 2
    again = match_label_means(volume, mask, informed, informed_label)
    assert again[mask == 2].mean() == pytest.approx(-0.9, abs=1e-5)
    assert np.array_equal(again[mask == 0], volume[mask == 0])


def test_a_label_the_slice_shows_but_the_mask_lacks_changes_nothing():
    volume, mask = _two_label_volume(1)
    informed_label = np.full((12, 12), 3, np.uint8)
    matched = match_label_means(volume, mask, np.zeros((12, 12), np.float32), informed_label)
    np.testing.assert_array_equal(matched, volume)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The same ic, test-setting and ig plans sampled without and with matching."""
    root = tmp_path_factory.mktemp("label-means")
    store, models_dir, models, cases = build_setup(root, PLAIN)
    digest, generator = models.denoiser_ref.sha256, models.generator_ref.sha256
    plans = [
        *plan_enhancement(store, cases[:3], "ic", 1, PLAIN, digest, config_hash(PLAIN)),
        *plan_test_regeneration(store, cases[3:], PLAIN, digest, config_hash(PLAIN)),
        *plan_enhancement(store, cases[:2], "ig", 1, PLAIN, digest, config_hash(PLAIN), generator_sha256=generator),
    ]
    return store, models_dir, synthesize(plans, store, models, PLAIN), synthesize(plans, store, models, MATCHED)


def _shown_labels(store, volume) -> set[int]:
    reference = volume.lineage.informed_slice
    _, label = read_case(store, reference.case_id)
    values, counts = np.unique(label[reference.slice_index], return_counts=True)
    return {int(value) for value, count in zip(values, counts, strict=True) if value and count >= MIN_SHOWN_VOXELS}


def test_synthesis_shifts_only_the_labels_a_real_informed_slice_shows_each_by_one_offset(generated):
    store, _, plain, matched = generated
    chosen = [volume for volume in plain if volume.lineage.informed_slice.mode == "chosen"]
    assert len(chosen) == 4 and all(_shown_labels(store, volume) for volume in chosen)
    moved = 0
    for before, after in zip(plain, matched, strict=True):
        assert np.array_equal(before.mask, after.mask)
        shown = _shown_labels(store, before) if before.lineage.informed_slice.mode == "chosen" else set()
        untouched = ~np.isin(before.mask, list(shown))
        assert np.array_equal(before.image[untouched], after.image[untouched])
        for value in shown:
            # voxels clipped in neither volume moved by the same offset
            inside = (before.mask == value) & (np.abs(before.image) < 1) & (np.abs(after.image) < 1)
            offsets = after.image[inside] - before.image[inside]
            if offsets.size > 1:
                assert np.ptp(offsets) < 1e-5
            moved += int(not np.array_equal(before.image[before.mask == value], after.image[after.mask == value]))
    assert moved >= 4


def test_matching_is_recorded_and_volumes_made_without_it_are_not_current(generated):
    _, models_dir, plain, matched = generated
    assert all(volume.lineage.sampler["match_label_means"] is True for volume in matched)
    assert all(volume.lineage.sampler["match_label_means"] is False for volume in plain)
    current = CurrentGeneration.of(models_dir, MATCHED)
    assert all(current.admits(volume.lineage) for volume in matched)
    assert not any(current.admits(volume.lineage) for volume in plain)
