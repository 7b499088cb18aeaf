"""Export store cases back to NIfTI with their true affine, so they overlay the original in any viewer;
synthetic volumes take their source case's affine and units; an nnU-Net v2 raw dataset of real + synthetic."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from gem3d.io.nifti import atomic_save_nifti
from gem3d.preprocess import denormalise_intensity, stored_to_ras
from gem3d.store import case_attributes, read_case, read_manifest, store_attributes, write_json_atomic
from gem3d.synthetic_store import list_synthetic, read_synthetic

FILE_ENDING = ".nii.gz"
TRAINING_SPLITS = ("train", "val")


def _save_image(image: np.ndarray, attributes: dict, path: Path, original_units: bool) -> Path:
    """A `(Z, H, W)` store image as NIfTI with the case's affine, in source units when asked."""
    if original_units:
        image = denormalise_intensity(image, attributes["normalisation"])
    affine = np.asarray(attributes["affine"], dtype=float)
    return atomic_save_nifti(stored_to_ras(np.asarray(image, dtype=np.float32)), affine, path)


def _save_label(label: np.ndarray, attributes: dict, path: Path) -> Path:
    affine = np.asarray(attributes["affine"], dtype=float)
    return atomic_save_nifti(stored_to_ras(np.asarray(label, dtype=np.uint8)), affine, path)


def export_case_nifti(
    store: str | Path, case_id: str, out_dir: str | Path, original_units: bool = True
) -> tuple[Path, Path]:
    """Write `<case>_image.nii.gz` and `<case>_label.nii.gz`; intensities back in source units by default."""
    attributes = case_attributes(store, case_id)
    image, label = read_case(store, case_id)
    out_dir = Path(out_dir)
    return (
        _save_image(image, attributes, out_dir / f"{case_id}_image.nii.gz", original_units),
        _save_label(label, attributes, out_dir / f"{case_id}_label.nii.gz"),
    )


def export_synthetic_nifti(
    synthetic_store: str | Path, real_store: str | Path, out_dir: str | Path, original_units: bool = True
) -> list[tuple[Path, Path]]:
    """Write `<synthetic_id>_image.nii.gz` and `_label.nii.gz` for every synthetic volume, with its SOURCE
    case's affine and, by default, intensities in the source case's units."""
    out_dir = Path(out_dir)
    written = []
    for synthetic_id in list_synthetic(synthetic_store):
        image, label, record = read_synthetic(synthetic_store, synthetic_id)
        source = case_attributes(real_store, record.source_case_id)
        written.append(
            (
                _save_image(image, source, out_dir / f"{synthetic_id}_image.nii.gz", original_units),
                _save_label(label, source, out_dir / f"{synthetic_id}_label.nii.gz"),
            )
        )
    return written


def nnunet_labels(real_store: str | Path, case_ids: list[str]) -> dict[str, int]:
    """nnU-Net `labels` (name -> stored value): declared names mapped through the store's label remapping."""
    names = store_attributes(real_store).get("labels") or {}
    mapping: dict[str, int] = {}
    for case_id in case_ids:
        mapping.update(case_attributes(real_store, case_id)["label_mapping"])
    labels = {"background": 0}
    for original, value in sorted(mapping.items(), key=lambda item: item[1]):
        if value > 0:
            labels[str(names.get(original, f"label_{value}"))] = int(value)
    return labels


def _write_case(
    folder: Path, images: str, labels: str, case_id: str, image: np.ndarray, label: np.ndarray, attributes: dict
) -> set[Path]:
    return {
        _save_image(image, attributes, folder / images / f"{case_id}_0000{FILE_ENDING}", original_units=True),
        _save_label(label, attributes, folder / labels / f"{case_id}{FILE_ENDING}"),
    }


def export_nnunet_dataset(
    real_store: str | Path, synthetic_store: str | Path | None, out_dir: str | Path, dataset_id: int, name: str
) -> Path:
    """Write an nnU-Net v2 raw dataset `Dataset{id:03d}_{name}/`: real train/val and all synthetic cases in
    imagesTr/labelsTr, real test cases in imagesTs/labelsTs, all in source units with true affines.

    Each file is written atomically; files of earlier exports that are no longer part of the dataset are
    removed; `dataset.json` is written last, so its presence means the dataset is complete.
    """
    if not 0 < dataset_id < 1000:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"dataset name {name!r} must be letters, digits, '_' or '-'")
    folder = Path(out_dir) / f"Dataset{dataset_id:03d}_{name}"
    manifest = read_manifest(real_store)
    written: set[Path] = set()
    training = 0
    for case_id, split in zip(manifest["case_id"], manifest["split"], strict=True):
        subfolders = ("imagesTr", "labelsTr") if split in TRAINING_SPLITS else ("imagesTs", "labelsTs")
        image, label = read_case(real_store, case_id)
        written |= _write_case(folder, *subfolders, case_id, image, label, case_attributes(real_store, case_id))
        training += split in TRAINING_SPLITS
    synthetic_ids = list_synthetic(synthetic_store) if synthetic_store is not None else []
    for synthetic_id in synthetic_ids:
        image, label, record = read_synthetic(synthetic_store, synthetic_id)
        source = case_attributes(real_store, record.source_case_id)
        written |= _write_case(folder, "imagesTr", "labelsTr", synthetic_id, image, label, source)
    for subfolder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for stale in (folder / subfolder).glob(f"*{FILE_ENDING}"):
            if stale not in written:
                stale.unlink()
    write_json_atomic(
        folder / "dataset.json",
        {
            "channel_names": {"0": store_attributes(real_store).get("modality", "MRI")},
            "labels": nnunet_labels(real_store, list(manifest["case_id"])),
            "numTraining": training + len(synthetic_ids),
            "file_ending": FILE_ENDING,
            "name": name,
            "description": f"gem3d export: {training} real and {len(synthetic_ids)} synthetic training cases",
        },
    )
    return folder
