"""PNG views: intensity mapping, mask outlines, display orientation, slice-spacing aspect, atomic saving."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gem3d import views
from tests.evaluation import blob_case


def _coloured(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return (pixels.max(-1) - pixels.min(-1)) > 30


def test_intensities_map_from_minus_one_one_to_bytes() -> None:
    np.testing.assert_array_equal(views.to_uint8(np.array([-1.0, 1.0, -3.0, 2.0, 0.0])), [0, 255, 0, 255, 128])


def test_mask_outline_is_drawn_in_colour_only_when_a_mask_is_given() -> None:
    image, label = blob_case(np.random.default_rng(0), (8, 32, 32))
    plain = views.orthogonal_views(image)
    outlined = views.orthogonal_views(image, label)
    assert plain.size == outlined.size
    assert not _coloured(plain).any()
    colour = np.asarray(outlined.convert("RGB")).reshape(-1, 3)
    assert (colour == views.LABEL_COLOURS[0]).all(-1).sum() > 20


def test_slice_spacing_stretches_coronal_and_sagittal_panels() -> None:
    image, _ = blob_case(np.random.default_rng(1), (8, 32, 32))
    isotropic = views.orthogonal_views(image, spacing=(1.0, 1.0, 1.0))
    thick = views.orthogonal_views(image, spacing=(1.0, 1.0, 8.0))
    assert isotropic.width == thick.width
    # the axial panel (32 mm) sets the isotropic row's height; 8 slices of 8 mm are 64 mm: twice as tall
    panel = isotropic.height - 2 * views.GAP - views.TITLE_HEIGHT
    assert thick.height - 2 * views.GAP - views.TITLE_HEIGHT == 2 * panel


def test_axial_display_is_radiological() -> None:
    volume = np.full((1, 16, 16), -1.0, dtype=np.float32)
    volume[0, :, :4] = 1.0  # low x = patient left: shown on the viewer's right
    volume[0, :4, :] = 0.0  # low y = posterior: shown at the bottom
    grid = np.asarray(views.slice_grid(volume, n=1).convert("L")).astype(float)
    tile = grid[views.GAP + views.TITLE_HEIGHT :, views.GAP :][:120, :120]  # 16 px * scale 7 = 112
    right, left = tile[40:60, 100:110].mean(), tile[40:60, 5:15].mean()
    bottom, top = tile[105:110, 50:60].mean(), tile[5:10, 50:60].mean()
    assert right > 200 and left < 10
    assert 110 < bottom < 150 and top < 10


def test_side_by_side_stacks_real_over_synthetic() -> None:
    image, label = blob_case(np.random.default_rng(2), (8, 32, 32))
    single = views.orthogonal_views(image, label)
    pair = views.side_by_side(image, -image, label)
    assert pair.height == 2 * single.height
    top, bottom = np.asarray(pair.convert("L"))[: single.height], np.asarray(pair.convert("L"))[single.height :]
    assert top.mean() != pytest.approx(bottom.mean(), abs=5)


def test_slice_grid_wraps_rows_of_columns() -> None:
    image, _ = blob_case(np.random.default_rng(3), (16, 24, 24))
    one_row = views.slice_grid(image, n=4, columns=4)
    two_rows = views.slice_grid(image, n=8, columns=4)
    assert two_rows.width == one_row.width
    assert two_rows.height == 2 * one_row.height


def test_mask_of_another_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        views.orthogonal_views(np.zeros((4, 8, 8)), np.zeros((4, 8, 9)))


def test_save_png_writes_atomically_and_overwrites(tmp_path) -> None:
    image, label = blob_case(np.random.default_rng(4), (8, 24, 24))
    first = views.orthogonal_views(image, label)
    path = views.save_png(first, tmp_path / "figures" / "views.png")
    views.save_png(views.slice_grid(image), path)
    reread = Image.open(path)
    assert reread.format == "PNG" and reread.size == views.slice_grid(image).size
    assert [p.name for p in path.parent.iterdir()] == ["views.png"]
