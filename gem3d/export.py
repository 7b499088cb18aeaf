"""Export store cases back to NIfTI with their true affine, so they overlay the original in any viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gem3d.io.nifti import atomic_save_nifti
from gem3d.preprocess import denormalise_intensity, stored_to_ras
from gem3d.store import case_attributes, read_case


def export_case_nifti(
    store: str | Path, case_id: str, out_dir: str | Path, original_units: bool = True
) -> tuple[Path, Path]:
    """Write `<case>_image.nii.gz` and `<case>_label.nii.gz`; intensities back in source units by default."""
    attributes = case_attributes(store, case_id)
    image, label = read_case(store, case_id)
    if original_units:
        image = denormalise_intensity(image, attributes["normalisation"])
    affine = np.asarray(attributes["affine"], dtype=float)
    out_dir = Path(out_dir)
    image_path = atomic_save_nifti(stored_to_ras(image.astype(np.float32)), affine, out_dir / f"{case_id}_image.nii.gz")
    label_path = atomic_save_nifti(stored_to_ras(label.astype(np.uint8)), affine, out_dir / f"{case_id}_label.nii.gz")
    return image_path, label_path
