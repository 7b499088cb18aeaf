"""PNG views of `(Z, H, W)` volumes with Pillow: orthogonal middle slices, real-vs-synthetic pairs, slice grids.

Intensities in `[-1, 1]` map linearly to 0..255 (values outside are clipped). Volumes are in the store's order
`(z, y, x)` with voxel axes running Right, Anterior, Superior; panels are drawn in radiological convention:
superior up, anterior up (axial) or left (sagittal), patient right on the viewer's left. Voxels are drawn
with nearest-neighbour scaling so slice-to-slice steps (seams) stay visible, and coronal/sagittal panels are
stretched by the slice spacing so anatomy keeps its physical aspect.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_MIN_PIXELS = 160
GAP = 8
TITLE_HEIGHT = 22
BACKGROUND = (17, 17, 17)
TEXT = (235, 235, 235)
LABEL_COLOURS = ((255, 64, 64), (64, 220, 64), (80, 140, 255), (255, 210, 0), (255, 0, 255), (0, 230, 230))

Spacing = tuple[float, float, float]  # (x, y, z) millimetres, as `PreprocessedCase.spacing` records it


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Map `[-1, 1]` to 0..255 (clipped), as uint8."""
    scaled = (np.clip(np.asarray(array, dtype=np.float64), -1.0, 1.0) + 1.0) * 127.5
    return np.round(scaled).astype(np.uint8)


def _check_volume(volume: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (Z, H, W) volume, got shape {volume.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != volume.shape:
            raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
        mask = np.rint(mask).astype(np.int64)
    return volume, mask


def _outline(labels: np.ndarray) -> np.ndarray:
    """Boolean map of labelled pixels with a 4-neighbour of another value: the mask's contour."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (labels > 0)


def _panel(plane: np.ndarray, labels: np.ndarray | None, size: tuple[int, int]) -> Image.Image:
    """One slice as an RGB image of `size` (width, height), nearest-neighbour, with the label contour painted."""
    image = Image.fromarray(to_uint8(plane)).resize(size, Image.Resampling.NEAREST).convert("RGB")
    if labels is None:
        return image
    scaled = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    pixels = np.array(image)
    contour = _outline(scaled)
    for value in np.unique(scaled[contour]):
        pixels[contour & (scaled == value)] = LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]
    return Image.fromarray(pixels)


def _titled(image: Image.Image, title: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + TITLE_HEIGHT), BACKGROUND)
    canvas.paste(image, (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=TEXT, font=_font())
    return canvas


def _row(images: list[Image.Image], label: str | None = None, label_width: int = 0) -> Image.Image:
    """Images side by side, top-aligned, with an optional label column on the left."""
    width = label_width + sum(i.width for i in images) + GAP * (len(images) + 1)
    height = max(i.height for i in images) + 2 * GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    x = label_width + GAP
    for image in images:
        canvas.paste(image, (x, GAP))
        x += image.width + GAP
    if label:
        ImageDraw.Draw(canvas).text((GAP, GAP + TITLE_HEIGHT + 4), label, fill=TEXT, font=_font(15))
    return canvas


def _column(images: list[Image.Image]) -> Image.Image:
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), BACKGROUND)
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height
    return canvas


def _orthogonal_panels(volume: np.ndarray, mask: np.ndarray | None, spacing: Spacing | None) -> list[Image.Image]:
    """Axial, coronal and sagittal middle slices, flipped to radiological display and scaled to physical aspect."""
    volume, mask = _check_volume(volume, mask)
    num_slices, height, width = volume.shape
    sx, sy, sz = spacing if spacing is not None else (1.0, 1.0, 1.0)
    pixels_per_mm = max(1, math.ceil(PANEL_MIN_PIXELS / max(height, width))) / sx
    cuts = {
        # name: (index into (z, y, x), row spacing, column spacing); rows/columns flipped for display below
        "axial": ((num_slices // 2, slice(None), slice(None)), sy, sx),
        "coronal": ((slice(None), height // 2, slice(None)), sz, sx),
        "sagittal": ((slice(None), slice(None), width // 2), sz, sy),
    }
    panels = []
    for name, (index, row_mm, column_mm) in cuts.items():
        plane = volume[index][::-1, ::-1]
        labels = None if mask is None else mask[index][::-1, ::-1]
        size = (
            max(1, round(plane.shape[1] * column_mm * pixels_per_mm)),
            max(1, round(plane.shape[0] * row_mm * pixels_per_mm)),
        )
        panels.append(_titled(_panel(plane, labels, size), name))
    return panels


def orthogonal_views(volume: np.ndarray, mask: np.ndarray | None = None, spacing: Spacing | None = None) -> Image.Image:
    """Axial, coronal and sagittal middle slices side by side; the label mask's contour in colour when given.

    `mask`: integer label volume of the same shape; `spacing`: `(x, y, z)` mm, used for the panels' aspect.
    """
    return _row(_orthogonal_panels(volume, mask, spacing))


def side_by_side(
    real: np.ndarray, synthetic: np.ndarray, mask: np.ndarray | None = None, spacing: Spacing | None = None
) -> Image.Image:
    """Orthogonal views of a real volume (top row) and its synthetic counterpart (bottom row), one mask on both."""
    label_width = 96
    return _column(
        [
            _row(_orthogonal_panels(real, mask, spacing), "real", label_width),
            _row(_orthogonal_panels(synthetic, mask, spacing), "synthetic", label_width),
        ]
    )


def slice_grid(volume: np.ndarray, n: int = 8, columns: int = 4, mask: np.ndarray | None = None) -> Image.Image:
    """`n` evenly spaced axial slices in a grid of `columns`, each titled with its slice index."""
    volume, mask = _check_volume(volume, mask)
    num_slices, height, width = volume.shape
    indices = sorted({int(round(z)) for z in np.linspace(0, num_slices - 1, min(n, num_slices))})
    scale = max(1, math.ceil(PANEL_MIN_PIXELS * 0.75 / max(height, width)))
    tiles = []
    for z in indices:
        labels = None if mask is None else mask[z][::-1, ::-1]
        tiles.append(_titled(_panel(volume[z][::-1, ::-1], labels, (width * scale, height * scale)), f"z = {z}"))
    return _column([_row(tiles[start : start + columns]) for start in range(0, len(tiles), columns)])


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as PNG atomically: to a temporary sibling first, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
