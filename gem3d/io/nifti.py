"""Reading and writing NIfTI with nibabel: every check on a raw case happens here, at the boundary.

`load_case` either returns a case that is safe to preprocess or raises an `InputError` naming the file.
`inspect_row` turns the outcome into one row of the raw inventory that the raw data contract validates.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from gem3d.errors import (
    DimensionError,
    EmptyImageError,
    GeometryMismatchError,
    InputError,
    LabelError,
    MissingFileError,
    NonFiniteError,
    UnreadableFileError,
)
from gem3d.io.layouts import CaseRef

AFFINE_TOLERANCE = 1e-3


@dataclass
class LoadedCase:
    """A raw case as read from disk: arrays in the file's voxel order (X, Y, Z) and its affine."""

    ref: CaseRef
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    image_sha256: str
    label_sha256: str


NIFTI2_HEADER_SIZE = 540


def _read(path: Path) -> tuple[nib.Nifti1Image, np.ndarray, str]:
    """Read a NIfTI file once: the image, its voxel array and the sha256 of the file's bytes.

    The file is decompressed in one call, which releases the GIL, so threaded workers read cases in
    parallel (streaming through `gzip` in 8 KiB chunks mostly holds it), and the bytes are hashed in memory.
    """
    if not path.exists():
        raise MissingFileError(path, "file does not exist")
    try:
        raw = path.read_bytes()
        content = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        header_size = {int.from_bytes(content[:4], order) for order in ("little", "big")}
        kind = nib.Nifti2Image if NIFTI2_HEADER_SIZE in header_size else nib.Nifti1Image
        nifti = kind.from_bytes(content)
        data = np.asanyarray(nifti.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as error:
        raise UnreadableFileError(path, f"cannot read NIfTI: {error}") from error
    return nifti, data, hashlib.sha256(raw).hexdigest()


def _image_data(data: np.ndarray, ref: CaseRef) -> np.ndarray:
    data = data.astype(np.float32, copy=False)
    if ref.channel is not None:
        if data.ndim != 4:
            raise DimensionError(ref.image_path, f"expected a 4D multi-channel image, got {data.ndim}D")
        if ref.channel >= data.shape[3]:
            raise DimensionError(ref.image_path, f"channel {ref.channel} out of range for shape {data.shape}")
        data = data[..., ref.channel]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DimensionError(ref.image_path, f"expected a 3D image, got shape {data.shape}")
    return data


def _integer_label(label_raw: np.ndarray, path: Path) -> np.ndarray:
    """The label volume as integers; refuse non-integer values (floats with fractions, NaN)."""
    if label_raw.dtype.kind in "iub":
        return label_raw
    label_float = np.asarray(label_raw, dtype=np.float64)
    if not np.all(np.isfinite(label_float)) or np.any(label_float != np.round(label_float)):
        raise LabelError(path, "label volume holds non-integer values")
    return label_float.astype(np.int64)


def _label_values(label: np.ndarray, low: int, high: int) -> set[int]:
    """The distinct values of an integer label volume whose range is `low..high` (a histogram when they fit
    in a byte: no sort, no copy)."""
    if low >= 0 and high <= 255:
        counts = np.bincount(label.astype(np.uint8, copy=False).ravel(order="K"), minlength=256)
        return set(np.flatnonzero(counts).tolist())
    return set(np.unique(label).tolist())


def load_case(ref: CaseRef, declared_labels: set[int] | None) -> LoadedCase:
    """Read and check one case; raise an `InputError` subclass naming the file and the problem."""
    image_nifti, image_data, image_sha256 = _read(ref.image_path)
    label_nifti, label_raw, label_sha256 = _read(ref.label_path)
    image = _image_data(image_data, ref)
    if label_raw.ndim == 4 and label_raw.shape[3] == 1:
        label_raw = label_raw[..., 0]
    if label_raw.ndim != 3:
        raise DimensionError(ref.label_path, f"expected a 3D label volume, got shape {label_raw.shape}")
    if label_raw.shape != image.shape:
        raise GeometryMismatchError(
            ref.label_path, f"label shape {label_raw.shape} differs from image shape {image.shape}"
        )
    if not np.allclose(image_nifti.affine, label_nifti.affine, atol=AFFINE_TOLERANCE):
        raise GeometryMismatchError(ref.label_path, "label affine differs from the image affine")
    if not np.all(np.isfinite(image)):
        count = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise NonFiniteError(ref.image_path, f"{count} NaN or infinite voxels")
    label = _integer_label(label_raw, ref.label_path)
    low, high = int(label.min()), int(label.max())
    values = _label_values(label, low, high)
    if declared_labels and not values <= declared_labels:
        raise LabelError(ref.label_path, f"label values {sorted(values - declared_labels)} are not declared")
    if low < 0 or high > 255:
        raise LabelError(ref.label_path, f"label values must lie in 0..255, got {low}..{high}")
    if float(image.max()) == float(image.min()):
        raise EmptyImageError(ref.image_path, f"image is constant ({float(image.min())})")
    spacing = np.asarray(image_nifti.header.get_zooms()[:3], dtype=float)
    if np.any(spacing <= 0):
        raise GeometryMismatchError(ref.image_path, f"non-positive voxel spacing {spacing.tolist()}")
    return LoadedCase(
        ref=ref,
        image=image,
        label=label.astype(np.uint8),
        affine=np.asarray(image_nifti.affine, dtype=np.float64),
        image_sha256=image_sha256,
        label_sha256=label_sha256,
    )


def inventory_row(ref: CaseRef, case: LoadedCase | None, error: InputError | None) -> dict:
    """One row of the raw inventory (what the raw contract validates); failed cases keep their reason."""
    row = {
        "case_id": ref.case_id,
        "image_path": str(ref.image_path),
        "label_path": str(ref.label_path),
        "readable": case is not None,
        "error_kind": error.kind if error else "",
        "error": str(error) if error else "",
    }
    if case is None:
        return row | {
            "image_ndim": 0,
            "label_ndim": 0,
            "image_shape": "",
            "label_shape": "",
            "shapes_match": False,
            "affines_match": False,
            "spacing_min": 0.0,
            "label_max": 0,
            "labels_outside_declared": 0,
            "nonfinite_voxels": 0,
            "image_sha256": "",
            "label_sha256": "",
        }
    spacing = np.sqrt((case.affine[:3, :3] ** 2).sum(axis=0))
    return row | {
        "image_ndim": case.image.ndim,
        "label_ndim": case.label.ndim,
        "image_shape": "x".join(map(str, case.image.shape)),
        "label_shape": "x".join(map(str, case.label.shape)),
        "shapes_match": case.image.shape == case.label.shape,
        "affines_match": True,
        "spacing_min": float(spacing.min()),
        "label_max": int(case.label.max()),
        "labels_outside_declared": 0,
        "nonfinite_voxels": int(np.size(case.image) - np.count_nonzero(np.isfinite(case.image))),
        "image_sha256": case.image_sha256,
        "label_sha256": case.label_sha256,
    }


def atomic_save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a NIfTI with its affine (qform and sform) under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        nib.save(image, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
