"""Export store cases back to NIfTI with their true affine, so they overlay the original in any viewer;
synthetic volumes take their source case's affine and units; an nnU-Net v2 raw dataset of real + synthetic.

A synthetic volume is training data only when every real case it derives from is (`gem3d.splits.derived_split`):
one made from a test case's mask or informed slice would leak that test case into the segmenter's training.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gem3d.io.nifti import atomic_save_nifti
from gem3d.lineage import LineageRecord
from gem3d.preprocess import denormalise_intensity, stored_to_ras
from gem3d.splits import TRAINING_SPLITS, derived_split, store_splits
from gem3d.store import case_attributes, read_case, read_manifest, store_attributes, write_json_atomic
from gem3d.synthetic_store import list_synthetic, read_synthetic, synthetic_attributes

FILE_ENDING = ".nii.gz"


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


def _export_synthetic_volume(
    synthetic_store: str | Path, real_store: str | Path, synthetic_id: str, out_dir: Path, original_units: bool
) -> tuple[Path, Path]:
    """Write one synthetic volume as `<synthetic_id>_image.nii.gz` and `_label.nii.gz` with its source's affine."""
    image, label, record = read_synthetic(synthetic_store, synthetic_id)
    source = case_attributes(real_store, record.source_case_id)
    return (
        _save_image(image, source, out_dir / f"{synthetic_id}_image.nii.gz", original_units),
        _save_label(label, source, out_dir / f"{synthetic_id}_label.nii.gz"),
    )


def export_synthetic_nifti(
    synthetic_store: str | Path, real_store: str | Path, out_dir: str | Path, original_units: bool = True
) -> list[tuple[Path, Path]]:
    """Write `<synthetic_id>_image.nii.gz` and `_label.nii.gz` for every synthetic volume, with its SOURCE
    case's affine and, by default, intensities in the source case's units."""
    return [
        _export_synthetic_volume(synthetic_store, real_store, synthetic_id, Path(out_dir), original_units)
        for synthetic_id in list_synthetic(synthetic_store)
    ]


def synthetic_splits(synthetic_store: str | Path, real_store: str | Path) -> dict[str, str]:
    """Synthetic id -> the split it derives from its real source cases (mask, informed slice, pasted lesions)."""
    splits = store_splits(real_store)
    return {
        synthetic_id: derived_split(_lineage(synthetic_store, synthetic_id).source_case_ids(), splits)
        for synthetic_id in list_synthetic(synthetic_store)
    }


def _lineage(synthetic_store: str | Path, synthetic_id: str) -> LineageRecord:
    """A published volume's lineage record, read from its attributes (no voxel reads)."""
    return LineageRecord.model_validate(synthetic_attributes(synthetic_store, synthetic_id)["lineage"])


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


@dataclass(frozen=True)
class NnunetExport:
    """What an nnU-Net export wrote: the dataset folder, its training and test counts, and the synthetic
    volumes left out of the training data (by the split they derive from) with where, if anywhere, they went."""

    folder: Path
    real_training: int
    real_test: int
    synthetic_training: int
    held_out: dict[str, int]
    held_out_folder: Path | None = None

    @property
    def num_training(self) -> int:
        """`numTraining` of dataset.json: every case in imagesTr."""
        return self.real_training + self.synthetic_training

    def summary(self) -> str:
        """One line for people: what went into the dataset and which synthetic volumes were left out, and why."""
        line = (
            f"{self.real_training} real and {self.synthetic_training} synthetic training cases, "
            f"{self.real_test} real test cases"
        )
        for split, count in sorted(self.held_out.items()):
            noun = "volume" if count == 1 else "volumes"
            line += f"; {count} synthetic {noun} derived from {split} cases left out of training data"
        if self.held_out and self.held_out_folder is not None:
            line += f" (written to {self.held_out_folder})"
        return line


def _check_dataset_name(dataset_id: int, name: str) -> None:
    if not 0 < dataset_id < 1000:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"dataset name {name!r} must be letters, digits, '_' or '-'")


def _check_held_out_folder(held_out_dir: Path, folder: Path) -> None:
    """Held-out volumes must never land where nnU-Net would read them as part of the dataset."""
    if held_out_dir.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"held-out synthetic folder {held_out_dir} must lie outside the dataset folder {folder}")


def export_nnunet_dataset(
    real_store: str | Path,
    synthetic_store: str | Path | None,
    out_dir: str | Path,
    dataset_id: int,
    name: str,
    held_out_dir: str | Path | None = None,
) -> NnunetExport:
    """Write an nnU-Net v2 raw dataset `Dataset{id:03d}_{name}/`: real train/val cases and the synthetic volumes
    derived only from train/val cases in imagesTr/labelsTr, real test cases in imagesTs/labelsTs, all in source
    units with true affines.

    A synthetic volume derived from a test case (its mask, informed slice or a pasted lesion) is left out; with
    `held_out_dir` it is written there as `<id>_image.nii.gz` / `_label.nii.gz`, outside the dataset. Each file
    is written atomically; files of earlier exports that are no longer part of the dataset are removed;
    `dataset.json` is written last, so its presence means the dataset is complete.
    """
    _check_dataset_name(dataset_id, name)
    folder = Path(out_dir) / f"Dataset{dataset_id:03d}_{name}"
    if held_out_dir is not None:
        _check_held_out_folder(Path(held_out_dir), folder)
    manifest = read_manifest(real_store)
    written: set[Path] = set()
    training = 0
    for case_id, split in zip(manifest["case_id"], manifest["split"], strict=True):
        subfolders = ("imagesTr", "labelsTr") if split in TRAINING_SPLITS else ("imagesTs", "labelsTs")
        image, label = read_case(real_store, case_id)
        written |= _write_case(folder, *subfolders, case_id, image, label, case_attributes(real_store, case_id))
        training += split in TRAINING_SPLITS
    derived = synthetic_splits(synthetic_store, real_store) if synthetic_store is not None else {}
    training_ids = [synthetic_id for synthetic_id, split in derived.items() if split in TRAINING_SPLITS]
    held_out_ids = [synthetic_id for synthetic_id, split in derived.items() if split not in TRAINING_SPLITS]
    for synthetic_id in training_ids:
        image, label, record = read_synthetic(synthetic_store, synthetic_id)
        source = case_attributes(real_store, record.source_case_id)
        written |= _write_case(folder, "imagesTr", "labelsTr", synthetic_id, image, label, source)
    if held_out_dir is not None:
        for synthetic_id in held_out_ids:
            _export_synthetic_volume(synthetic_store, real_store, synthetic_id, Path(held_out_dir), original_units=True)
    for subfolder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for stale in (folder / subfolder).glob(f"*{FILE_ENDING}"):
            if stale not in written:
                stale.unlink()
    result = NnunetExport(
        folder=folder,
        real_training=training,
        real_test=len(manifest) - training,
        synthetic_training=len(training_ids),
        held_out=dict(Counter(derived[synthetic_id] for synthetic_id in held_out_ids)),
        held_out_folder=Path(held_out_dir) if held_out_dir is not None else None,
    )
    write_json_atomic(
        folder / "dataset.json",
        {
            "channel_names": {"0": store_attributes(real_store).get("modality", "MRI")},
            "labels": nnunet_labels(real_store, list(manifest["case_id"])),
            "numTraining": result.num_training,
            "file_ending": FILE_ENDING,
            "name": name,
            "description": f"gem3d export: {training} real and {len(training_ids)} synthetic training cases",
        },
    )
    return result
