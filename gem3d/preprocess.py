"""Pure array functions that turn a raw case into the model's grid, recording what is needed to invert them.

Order: reorient to RAS -> optional resample to a target spacing -> crop empty slices along Z ->
in-plane resize -> intensity normalisation to `[-1, 1]` -> contiguous label remap -> anatomy outline. The affine is
updated at every geometric step, so world coordinates of every voxel stay correct. Stored arrays are
`(Z, H, W)`: the transpose of the RAS voxel order `(X, Y, Z)`; the recorded affine maps RAS voxel
indices `(x, y, z)` of the preprocessed grid to world millimetres, exactly as a NIfTI affine does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from gem3d.anatomy import anatomy_outline
from gem3d.config import DataConfig
from gem3d.errors import EmptyImageError, TooFewSlicesError


@dataclass
class PreprocessedCase:
    """A case on the model's grid: `image` float32 in `[-1, 1]`, `label` uint8, `outline` bool, all `(Z, H, W)`."""

    image: np.ndarray
    label: np.ndarray
    outline: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    geometry: dict = field(default_factory=dict)
    normalisation: dict = field(default_factory=dict)
    label_mapping: dict[int, int] = field(default_factory=dict)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three index axes, read from the affine's column norms."""
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def reorient_to_ras(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute and flip axes so voxel axes run Right, Anterior, Superior; the world geometry is unchanged."""
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt("RAS"))
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    image = nib.orientations.apply_orientation(image, transform)
    label = nib.orientations.apply_orientation(label, transform)
    return np.ascontiguousarray(image), np.ascontiguousarray(label), new_affine


def _index_scaling(old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """Affine from new voxel indices to old ones when a grid is resized with aligned corners at voxel edges."""
    scales = np.array(old_shape, dtype=float) / np.array(new_shape, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(scales)
    matrix[:3, 3] = (scales - 1) / 2
    return matrix


def _resize(array: np.ndarray, shape: tuple[int, ...], is_label: bool) -> np.ndarray:
    """Resize a 3D array: trilinear for intensities, nearest neighbour for labels (no value invented)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if is_label:
        resized = F.interpolate(tensor, size=shape, mode="nearest-exact")
        return resized[0, 0].numpy().astype(array.dtype)
    resized = F.interpolate(tensor, size=shape, mode="trilinear", align_corners=False)
    return resized[0, 0].numpy()


def resample_to_spacing(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, target: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample both volumes to a target voxel spacing (mm), keeping the physical extent."""
    spacing = np.array(spacing_of(affine))
    shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(image.shape, spacing, target, strict=True))
    new_affine = affine @ _index_scaling(image.shape, shape)
    return _resize(image, shape, False), _resize(label, shape, True), new_affine


def empty_slice_bounds(image: np.ndarray, label: np.ndarray, mode: str) -> tuple[int, int]:
    """First and one-past-last axial slice (last axis) holding content: label foreground or image foreground."""
    if mode == "label":
        occupied = label.reshape(-1, label.shape[2]).any(axis=0)
    else:
        background = float(np.percentile(image, 1))
        occupied = (image > background + 1e-6).reshape(-1, image.shape[2]).any(axis=0)
    indices = np.flatnonzero(occupied)
    if indices.size == 0:
        return 0, image.shape[2]
    return int(indices[0]), int(indices[-1]) + 1


def normalise_intensity(
    image: np.ndarray, modality: str, config: DataConfig
) -> tuple[np.ndarray, dict[str, float | str]]:
    """Map intensities to `[-1, 1]`: MRI by robust foreground percentiles, CT by a Hounsfield window."""
    if modality == "CT":
        low, high = config.ct_window
        method = "ct_window"
    else:
        foreground = image[image > image.min()]
        low, high = (float(v) for v in np.percentile(foreground, config.mri_percentiles))
        method = "mri_percentiles"
    if high <= low:
        raise EmptyImageError(None, f"intensity range collapses ({low} to {high}): nothing to normalise")
    scaled = np.clip((image - low) / (high - low) * 2 - 1, -1, 1).astype(np.float32)
    return scaled, {"method": method, "low": float(low), "high": float(high)}


def denormalise_intensity(image: np.ndarray, normalisation: dict) -> np.ndarray:
    """Invert `normalise_intensity` (inside the clipping range): back to the original units."""
    low, high = normalisation["low"], normalisation["high"]
    return ((np.asarray(image, dtype=np.float32) + 1) / 2 * (high - low) + low).astype(np.float32)


def remap_labels(label: np.ndarray, declared_values: list[int]) -> tuple[np.ndarray, dict[int, int]]:
    """Renumber declared label values to 0..K-1 in sorted order (0 stays background)."""
    mapping = {int(value): index for index, value in enumerate(sorted(set(declared_values) | {0}))}
    lookup = np.zeros(256, dtype=np.uint8)
    for value, index in mapping.items():
        lookup[value] = index
    return lookup[label], mapping


def crop_mode(config: DataConfig, modality: str) -> str:
    """`auto` crops by labels for CT (the paper's abdomen outliers) and by image content for MRI."""
    if config.crop_empty_slices != "auto":
        return config.crop_empty_slices
    return "label" if modality == "CT" else "image"


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    modality: str,
    declared_labels: list[int],
    config: DataConfig,
) -> PreprocessedCase:
    """Run the whole preprocessing chain on one case (arrays in file voxel order) and record its geometry."""
    original_shape = tuple(int(n) for n in image.shape)
    original_affine = affine.copy()
    image, label, affine = reorient_to_ras(image, label, affine)
    if config.target_spacing is not None:
        image, label, affine = resample_to_spacing(image, label, affine, config.target_spacing)
    mode = crop_mode(config, modality)
    start, stop = (0, image.shape[2]) if mode == "none" else empty_slice_bounds(image, label, mode)
    if stop - start < config.window_length:
        raise TooFewSlicesError(
            None, f"{stop - start} slices after cropping, fewer than one window of {config.window_length}"
        )
    image, label = image[:, :, start:stop], label[:, :, start:stop]
    affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, start], [0, 0, 0, 1]], dtype=float)
    size = config.in_plane_size
    resized_shape = (size, size, image.shape[2])
    affine = affine @ _index_scaling(image.shape, resized_shape)
    image, label = _resize(image, resized_shape, False), _resize(label, resized_shape, True)
    image, normalisation = normalise_intensity(image, modality, config)
    label, mapping = remap_labels(label, declared_labels)
    # (X, Y, Z) -> (Z, H=Y, W=X)
    image = np.ascontiguousarray(rearrange(image, "x y z -> z y x"))
    return PreprocessedCase(
        image=image,
        label=np.ascontiguousarray(rearrange(label, "x y z -> z y x")),
        outline=anatomy_outline(image),
        affine=affine,
        spacing=spacing_of(affine),
        geometry={
            "original_shape": list(original_shape),
            "original_affine": original_affine.tolist(),
            "crop_box_ras_z": [start, stop],
            "crop_mode": mode,
        },
        normalisation=normalisation,
        label_mapping=mapping,
    )


def stored_to_ras(array: np.ndarray) -> np.ndarray:
    """`(Z, H, W)` store order back to RAS voxel order `(X, Y, Z)` for writing NIfTI with the stored affine."""
    return np.ascontiguousarray(rearrange(array, "z y x -> x y z"))
