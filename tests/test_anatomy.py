"""The anatomy outline: one filled body component from the image, and the extra condition class it becomes.

Volumes are `(Z, H, W)` as the store keeps them; the phantoms are made in RAS `(X, Y, Z)` and transposed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import norm

from gem3d.anatomy import THRESHOLD_FRACTION, anatomy_outline, outlined_label
from gem3d.config import DataConfig
from gem3d.io.phantoms import case_generator, make_abdomen_phantom, make_brain_phantom
from gem3d.models.conditioning import mask_to_condition, window_condition
from gem3d.preprocess import normalise_intensity

NUM_CLASSES = 3
PHANTOM_SHAPE = (64, 64, 32)  # RAS (X, Y, Z)
SMOOTHING_SIGMA = (0.5, 1.0, 1.0)  # the outline's Gaussian smoothing, (Z, H, W) voxels
SHAPE = (24, 48, 48)  # (Z, H, W)
SEMI_AXES = (8.0, 16.0, 12.0)  # (Z, H, W) voxels
HOLE_SEMI_AXES = (4.0, 6.0, 5.0)  # (Z, H, W) voxels, about the centre


def _centred_grid(shape):
    """Voxel offsets from the volume centre, one (Z, H, W) array per axis."""
    return np.meshgrid(*(np.arange(size) - (size - 1) / 2 for size in shape), indexing="ij")


def _ellipsoid(shape, semi_axes):
    return sum((axis / semi) ** 2 for axis, semi in zip(_centred_grid(shape), semi_axes, strict=True)) < 1


@pytest.fixture(scope="module")
def noisy_ellipsoid():
    """A bright ellipsoid with a dark ellipsoidal hole at its centre and four bright 2-voxel specks in the air."""
    rng = np.random.default_rng(0)
    body = _ellipsoid(SHAPE, SEMI_AXES)
    hole = _ellipsoid(SHAPE, HOLE_SEMI_AXES)
    specks = np.zeros(SHAPE, dtype=bool)
    for z, h, w in ((2, 2, 2), (2, 44, 44), (20, 2, 44), (20, 44, 2)):
        specks[z : z + 2, h : h + 2, w : w + 2] = True
    assert not (specks & ndimage.binary_dilation(body, iterations=3)).any()
    image = np.where((body & ~hole) | specks, 1.0, 0.0) + 0.05 * rng.standard_normal(SHAPE)
    return image.astype(np.float32), body, hole, specks


@pytest.fixture(scope="module")
def brains():
    """Brain phantoms normalised as preprocessing does: (image, label), both (Z, H, W)."""
    cases = []
    for index in range(3):
        image, label = make_brain_phantom(case_generator(0, index), PHANTOM_SHAPE)
        normalised, _ = normalise_intensity(image, "FLAIR", DataConfig())
        cases.append((normalised.transpose(2, 1, 0), label.transpose(2, 1, 0)))
    return cases


@pytest.fixture(scope="module")
def abdomens():
    """Abdomen CT phantoms in the CT window as preprocessing does: (image, label), both (Z, H, W)."""
    cases = []
    for index in range(3):
        image, label = make_abdomen_phantom(case_generator(0, index), PHANTOM_SHAPE)
        normalised, _ = normalise_intensity(image.astype(np.float32), "CT", DataConfig())
        cases.append((normalised.transpose(2, 1, 0), label.transpose(2, 1, 0)))
    return cases


def test_outline_of_a_noisy_ellipsoid_is_one_component_with_the_hole_filled_and_no_specks(noisy_ellipsoid):
    image, body, hole, specks = noisy_ellipsoid
    outline = anatomy_outline(image)
    assert outline.dtype == bool and outline.shape == SHAPE
    _, components = ndimage.label(outline)
    assert components == 1
    assert outline[hole].all()
    assert not outline[specks].any()
    assert outline[body].all()


def test_outline_volume_matches_the_ellipsoid_grown_by_the_threshold_offset_of_the_smoothed_edge(noisy_ellipsoid):
    """A step edge smoothed with sigma crosses the threshold (a fraction f of the step) sigma * z(1 - f) outside
    the edge; the outline is the ellipsoid grown by that much along each axis, to within a few percent."""
    image, body, _, _ = noisy_ellipsoid
    offset = norm.ppf(1 - THRESHOLD_FRACTION)
    grown = [semi + sigma * offset for semi, sigma in zip(SEMI_AXES, SMOOTHING_SIGMA, strict=True)]
    expected = 4 / 3 * np.pi * np.prod(grown)
    voxels = int(anatomy_outline(image).sum())
    assert voxels == pytest.approx(expected, rel=0.05)
    assert voxels > body.sum()


def test_brain_outline_area_rises_then_falls_along_z(brains):
    for image, _ in brains:
        area = anatomy_outline(image).sum(axis=(1, 2))  # (Z,)
        occupied = np.flatnonzero(area)
        first, last = int(occupied[0]), int(occupied[-1])
        length = last - first + 1
        near_end = max(1, length // 10)
        middle = area[first + length // 3 : last + 1 - length // 3]
        ends = area[[first + near_end, last - near_end]]
        assert middle.min() > 1.5 * ends.max()
        assert first + length // 4 <= int(area.argmax()) <= last - length // 4


def test_brain_outline_holds_every_label_voxel_and_much_less_than_the_slice(brains):
    for image, label in brains:
        outline = anatomy_outline(image)
        assert outline[label > 0].all()
        slice_fraction = outline.sum(axis=(1, 2)) / outline[0].size  # (Z,)
        assert slice_fraction.max() < 0.75
        assert outline.mean() < 0.5


def test_abdomen_outline_holds_every_organ_and_leaves_the_air_around_the_body_out(abdomens):
    for image, label in abdomens:
        outline = anatomy_outline(image)
        assert outline[label > 0].all()
        for corner in (np.s_[:, :4, :4], np.s_[:, :4, -4:], np.s_[:, -4:, :4], np.s_[:, -4:, -4:]):
            assert not outline[corner].any()
        # no further into the air than the smoothing reaches: 1 slice in Z, 2 voxels in-plane
        not_air = image > image.min() + 0.05
        reach = ndimage.binary_dilation(not_air, structure=np.ones((3, 5, 5), dtype=bool))
        reach = np.stack([ndimage.binary_fill_holes(axial) for axial in reach])  # per slice: (H, W)
        assert not (outline & ~reach).any()


def test_constant_volume_has_an_empty_outline():
    outline = anatomy_outline(np.full((6, 16, 16), 0.3, dtype=np.float32))
    assert outline.shape == (6, 16, 16) and not outline.any()


def test_outline_of_a_2d_image_is_refused():
    with pytest.raises(ValueError, match="Z, H, W"):
        anatomy_outline(np.zeros((16, 16), dtype=np.float32))


def _random_label_and_outline(seed: int = 1):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, NUM_CLASSES + 1, size=(2, 4, 8, 8)).astype(np.uint8)  # (B, L, H, W)
    outline = rng.random((2, 4, 8, 8)) < 0.5
    return label, outline


def test_outlined_label_keeps_labels_marks_the_body_and_leaves_the_rest_zero():
    label, outline = _random_label_and_outline()
    outlined = outlined_label(label, outline, NUM_CLASSES)
    assert outlined.shape == label.shape
    np.testing.assert_array_equal(outlined[label > 0], label[label > 0])
    assert (outlined[outline & (label == 0)] == NUM_CLASSES + 1).all()
    assert (outlined[~outline & (label == 0)] == 0).all()


def test_outlined_label_on_torch_tensors_matches_numpy():
    label, outline = _random_label_and_outline()
    expected = outlined_label(label, outline, NUM_CLASSES)
    outlined = outlined_label(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(outline), NUM_CLASSES)
    assert isinstance(outlined, torch.Tensor)
    np.testing.assert_array_equal(outlined.numpy(), expected)


def test_outlined_label_refuses_a_shape_mismatch():
    label, outline = _random_label_and_outline()
    with pytest.raises(ValueError, match="differ in shape"):
        outlined_label(label, outline[:, :, :-1], NUM_CLASSES)
    with pytest.raises(ValueError, match="differ in shape"):
        outlined_label(torch.from_numpy(label), torch.from_numpy(outline[:, :1]), NUM_CLASSES)


def test_window_condition_with_outline_adds_the_body_without_label_as_the_last_channel():
    label, outline = _random_label_and_outline()
    label_t, outline_t = torch.from_numpy(label.astype(np.int64)), torch.from_numpy(outline)
    condition = window_condition(label_t, outline_t, NUM_CLASSES, True, "onehot", size=8)
    assert condition.shape == (2, 4, NUM_CLASSES + 1, 8, 8)  # (B, L, Cm, H, W)
    np.testing.assert_array_equal(condition[:, :, -1].numpy(), (outline & (label == 0)).astype(np.float32))
    for value in range(1, NUM_CLASSES + 1):
        np.testing.assert_array_equal(condition[:, :, value - 1].numpy(), (label == value).astype(np.float32))


def test_window_condition_without_outline_is_the_mask_condition_of_the_label_alone():
    label, outline = _random_label_and_outline()
    label_t = torch.from_numpy(label.astype(np.int64))
    expected = mask_to_condition(label_t, NUM_CLASSES, "onehot", 4)
    for given in (torch.from_numpy(outline), None):
        condition = window_condition(label_t, given, NUM_CLASSES, False, "onehot", size=4)
        torch.testing.assert_close(condition, expected, rtol=0, atol=0)


def test_window_condition_with_outline_refuses_a_missing_outline():
    label, _ = _random_label_and_outline()
    with pytest.raises(ValueError, match="outline"):
        window_condition(torch.from_numpy(label.astype(np.int64)), None, NUM_CLASSES, True, "onehot", size=8)
