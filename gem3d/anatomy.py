"""The anatomy outline: where the body part (head, abdomen) is, derived from the image at preprocessing.

A tumour or organ mask says nothing about the head or body around it, so a model conditioned on it alone
draws one cross-section shape at every slice. The outline (foreground threshold, largest 3D component,
holes filled per axial slice and in 3D) is stored beside the label and, when `denoiser.anatomy_outline` is
on, joins the condition as one more class: "inside the body, no label" (MAISI's body label, in spirit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from gem3d.config import Config

OUTLINE_METHOD = "threshold-largest-component-filled-v1"
ABLATION_MODELS = "no-outline"
"""Folder, inside the models folder, of the stage 1 and 2 bundles trained without the outline (the ablation)."""
THRESHOLD_FRACTION = 0.08
"""Foreground: brighter than the background level by this fraction of the background-to-bright range."""


def anatomy_outline(image: np.ndarray) -> np.ndarray:
    """Body part of a `(Z, H, W)` volume as a bool mask: smoothed threshold, largest component, holes filled.

    The background level is the 1st intensity percentile and "bright" the 99th, so the threshold follows the
    volume's own scale (MRI after percentile scaling, CT after its window); air-filled holes (bowel gas,
    ventricles dark on some sequences) are filled per axial slice and then in 3D.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"anatomy outline needs a (Z, H, W) volume, got shape {image.shape}")
    smooth = ndimage.gaussian_filter(image, sigma=(0.5, 1.0, 1.0))
    background, bright = (float(value) for value in np.percentile(smooth, (1, 99)))
    if bright - background <= 1e-6:
        return np.zeros(image.shape, dtype=bool)
    foreground = smooth > background + THRESHOLD_FRACTION * (bright - background)
    components, count = ndimage.label(foreground)
    if count == 0:
        return foreground
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(sizes.argmax())
    body = np.stack([ndimage.binary_fill_holes(axial) for axial in body])  # per slice: (H, W) each
    return ndimage.binary_fill_holes(body)


def outline_summary(outline: np.ndarray, label: np.ndarray) -> dict[str, float | int | str]:
    """What the case attributes record of an outline: its size, its z extent, and labels left outside it."""
    outline = np.asarray(outline, dtype=bool)
    foreground = np.asarray(label) > 0
    occupied = np.flatnonzero(outline.reshape(outline.shape[0], -1).any(axis=1))
    return {
        "method": OUTLINE_METHOD,
        "voxels": int(outline.sum()),
        "fraction": float(outline.mean()),
        "first_slice": int(occupied[0]) if occupied.size else -1,
        "last_slice": int(occupied[-1]) if occupied.size else -1,
        "label_voxels_outside": int(np.count_nonzero(foreground & ~outline)),
    }


def condition_classes(num_classes: int, with_outline: bool) -> int:
    """Classes of the condition label: the labels 1..num_classes, plus one for "body, no label" with the outline."""
    return num_classes + 1 if with_outline else num_classes


def outlined_label(label: np.ndarray, outline: np.ndarray, num_classes: int) -> np.ndarray:
    """The condition label: labels as they are, `num_classes + 1` inside the outline where no label is, 0 outside.

    Works on numpy arrays and torch tensors of equal shape (any leading dims).
    """
    if tuple(label.shape) != tuple(outline.shape):
        raise ValueError(f"label {tuple(label.shape)} and outline {tuple(outline.shape)} differ in shape")
    body = (outline > 0) & (label == 0)
    return label + body * (num_classes + 1)


def without_outline(config: Config) -> Config:
    """`config` with the denoiser conditioned on the mask alone: the outline ablation (and the paper's model)."""
    return config.model_copy(update={"denoiser": config.denoiser.model_copy(update={"anatomy_outline": False})})
