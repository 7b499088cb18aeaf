"""Preprocessing keeps world geometry: a known world point lands on the same structure after every step."""

import nibabel as nib
import numpy as np
import pytest

from gem3d.config import DataConfig
from gem3d.errors import TooFewSlicesError
from gem3d.preprocess import (
    denormalise_intensity,
    normalise_intensity,
    preprocess_case,
    remap_labels,
    reorient_to_ras,
    resample_to_spacing,
)
from tests.builders import lps_affine, make_volume


def _world(affine, index):
    return (affine @ np.array([*index, 1.0]))[:3]


def _voxel(affine, world):
    return np.round(np.linalg.inv(affine) @ np.array([*world, 1.0]))[:3].astype(int)


def test_reorientation_to_ras_preserves_every_voxels_world_position():
    rng = np.random.default_rng(0)
    image, label = make_volume(rng)
    affine = lps_affine()
    ras_image, _, ras_affine = reorient_to_ras(image, label, affine)
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    for index in [(0, 0, 0), (5, 7, 3), (23, 19, 13)]:
        world = _world(affine, index)
        assert ras_image[tuple(_voxel(ras_affine, world))] == image[index]


def test_known_world_point_keeps_its_label_through_crop_resize_and_remap():
    rng = np.random.default_rng(1)
    image, label = make_volume(rng, labels=(3, 7))
    affine = lps_affine()
    config = DataConfig(window_length=4, in_plane_size=16)
    result = preprocess_case(image, label, affine, "MRI", [0, 3, 7], config)
    assert result.label_mapping == {0: 0, 3: 1, 7: 2}
    centre = np.argwhere(label == 7).mean(axis=0).round().astype(int)
    world = _world(affine, centre)
    x, y, z = _voxel(result.affine, world)
    assert result.label[z, y, x] == 2
    assert result.image.shape == result.label.shape
    assert result.image.shape[1:] == (16, 16)
    assert result.image.min() >= -1 and result.image.max() <= 1
    assert nib.aff2axcodes(result.affine) == ("R", "A", "S")


def test_empty_end_slices_are_cropped_and_recorded():
    rng = np.random.default_rng(2)
    image, label = make_volume(rng, shape=(24, 20, 20))
    config = DataConfig(window_length=4, in_plane_size=16, crop_empty_slices="label")
    result = preprocess_case(image, label, lps_affine(), "CT", [0, 1, 2], config)
    start, stop = result.geometry["crop_box_ras_z"]
    assert start > 0 and stop < 20
    assert result.image.shape[0] == stop - start
    assert result.label[0].any() and result.label[-1].any()


def test_resampling_to_a_target_spacing_keeps_the_physical_extent():
    rng = np.random.default_rng(3)
    image, label = make_volume(rng)
    ras_image, ras_label, ras_affine = reorient_to_ras(image, label, lps_affine())
    new_image, new_label, new_affine = resample_to_spacing(ras_image, ras_label, ras_affine, (3.0, 2.4, 3.0))
    assert new_image.shape == (12, 10, 14)
    assert np.allclose(np.abs(np.diag(new_affine)[:3]), (3.0, 2.4, 3.0))
    assert set(np.unique(new_label)) <= {0, 1, 2}
    extent_before = np.array(ras_image.shape) * np.abs(np.diag(ras_affine)[:3])
    extent_after = np.array(new_image.shape) * np.abs(np.diag(new_affine)[:3])
    assert np.allclose(extent_before, extent_after)


def test_labels_are_never_invented_by_resizing():
    rng = np.random.default_rng(4)
    image, label = make_volume(rng, labels=(2, 5))
    result = preprocess_case(
        image, label, lps_affine(), "MRI", [0, 2, 5], DataConfig(window_length=4, in_plane_size=13)
    )
    assert set(np.unique(result.label)) <= {0, 1, 2}


@pytest.mark.parametrize("modality", ["MRI", "CT"])
def test_intensity_normalisation_is_invertible_inside_its_range(modality):
    rng = np.random.default_rng(5)
    image = rng.uniform(-100, 200, size=(8, 8, 8)).astype(np.float32)
    config = DataConfig(mri_percentiles=(0.0, 100.0), ct_window=(-100.0, 200.0))
    scaled, params = normalise_intensity(image, modality, config)
    assert scaled.min() >= -1 and scaled.max() <= 1
    inside = (image > params["low"]) & (image < params["high"])
    assert np.allclose(denormalise_intensity(scaled, params)[inside], image[inside], atol=1e-3)


def test_ct_window_maps_hounsfield_limits_to_plus_minus_one():
    image = np.array([[[-1000.0, -175.0, 275.0, 2000.0]]], dtype=np.float32)
    scaled, params = normalise_intensity(image, "CT", DataConfig())
    assert params == {"method": "ct_window", "low": -175.0, "high": 275.0}
    assert scaled.ravel().tolist() == [-1.0, -1.0, 1.0, 1.0]


def test_label_remap_is_contiguous():
    remapped, mapping = remap_labels(np.array([0, 4, 9, 4], dtype=np.uint8), [4, 9])
    assert mapping == {0: 0, 4: 1, 9: 2}
    assert remapped.tolist() == [0, 1, 2, 1]


def test_too_few_slices_for_a_window_is_refused():
    rng = np.random.default_rng(6)
    image, label = make_volume(rng, shape=(16, 16, 6))
    with pytest.raises(TooFewSlicesError, match="fewer than one window of 16"):
        preprocess_case(image, label, lps_affine(), "MRI", [0, 1, 2], DataConfig(window_length=16, in_plane_size=16))
