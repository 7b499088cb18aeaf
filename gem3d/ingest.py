"""One case from raw files to a staged Zarr group, plus the per-case tables the contracts validate.

The Prefect flow maps `process_case` over the dataset's cases; everything here is plain Python so it
also runs in a Dask worker or a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gem3d.anatomy import OUTLINE_METHOD, outline_summary
from gem3d.config import DataConfig
from gem3d.errors import InputError
from gem3d.io.layouts import CaseRef, DatasetInfo
from gem3d.io.nifti import inventory_row, load_case
from gem3d.preprocess import preprocess_case
from gem3d.store import CASES, case_attributes, list_cases, stage_case

DATASET_NAME = "dataset_name"


@dataclass
class CaseOutcome:
    """What happened to one case: skipped (unchanged), staged (to publish), or failed (to quarantine)."""

    case_id: str
    status: str
    inventory: dict
    statistics: dict = field(default_factory=dict)
    staged: Path | None = None
    error: dict | None = None


def case_statistics(image: np.ndarray, label: np.ndarray, num_classes: int) -> dict:
    """Per-case numbers for the manifest and the preprocessed contract (computed once, from voxels)."""
    counts = np.bincount(label.ravel(), minlength=num_classes)
    statistics = {
        "shape_z": int(image.shape[0]),
        "shape_h": int(image.shape[1]),
        "shape_w": int(image.shape[2]),
        "image_min": float(np.nanmin(image)),
        "image_max": float(np.nanmax(image)),
        "image_mean": float(np.nanmean(image)),
        "image_std": float(np.nanstd(image)),
        "nonfinite_voxels": int(image.size - np.count_nonzero(np.isfinite(image))),
        "label_max": int(label.max()),
        "foreground_voxels": int(np.count_nonzero(label)),
    }
    statistics.update({f"label_{index}_voxels": int(count) for index, count in enumerate(counts)})
    return statistics


def recorded_dataset_name(store: Path | str) -> str | None:
    """The name of the dataset a store was ingested from (what the `ma` edit profile is chosen by), if recorded.

    Read from the first case's attributes; stores written before the name was recorded give None.
    """
    case_ids = list_cases(store)
    return case_attributes(store, case_ids[0]).get(DATASET_NAME) if case_ids else None


def declared_label_values(info: DatasetInfo) -> list[int]:
    return sorted(set(info.labels) | {0})


def process_case(ref: CaseRef, info: DatasetInfo, config: DataConfig, store: Path, data_hash: str) -> CaseOutcome:
    """Load, check, preprocess and stage one case; skip it when its sources and config are unchanged."""
    declared = declared_label_values(info) if info.labels else None
    try:
        case = load_case(ref, set(declared) if declared else None)
    except InputError as error:
        return CaseOutcome(ref.case_id, "failed", inventory_row(ref, None, error), error=error.as_record())
    inventory = inventory_row(ref, case, None)
    sources = {"image": case.image_sha256, "label": case.label_sha256}
    if (store / CASES / ref.case_id / "zarr.json").exists():
        existing = case_attributes(store, ref.case_id)
        unchanged = existing.get("source_sha256") == sources and existing.get("config_hash") == data_hash
        if unchanged and existing.get("outline", {}).get("method") == OUTLINE_METHOD:
            return CaseOutcome(ref.case_id, "skipped", inventory, statistics=existing["statistics"])
    label_values = declared or sorted(set(np.unique(case.label).tolist()) | {0})
    try:
        prepared = preprocess_case(case.image, case.label, case.affine, info.modality, label_values, config)
    except InputError as error:
        error.path = str(ref.image_path)
        failure = inventory | {
            "readable": False,
            "error_kind": error.kind,
            "error": f"{ref.image_path}: {error.reason}",
        }
        return CaseOutcome(ref.case_id, "failed", failure, error=error.as_record())
    num_classes = len(prepared.label_mapping)
    statistics = case_statistics(prepared.image, prepared.label, num_classes)
    attributes = {
        "affine": prepared.affine.tolist(),
        "spacing": list(prepared.spacing),
        "geometry": prepared.geometry,
        "normalisation": prepared.normalisation,
        "label_mapping": {str(k): v for k, v in prepared.label_mapping.items()},
        "modality": info.modality,
        "source_files": {"image": str(ref.image_path), "label": str(ref.label_path)},
        "source_sha256": sources,
        "config_hash": data_hash,
        "dataset_split": ref.split,
        DATASET_NAME: info.name,
        "statistics": statistics,
        "outline": outline_summary(prepared.outline, prepared.label),
    }
    staged = stage_case(store, ref.case_id, prepared.image, prepared.label, attributes, outline=prepared.outline)
    return CaseOutcome(ref.case_id, "staged", inventory, statistics=statistics, staged=staged)


def build_manifest(store: Path, case_ids: list[str], splits: dict[str, str]) -> pd.DataFrame:
    """One row per published case from its attributes (no voxel reads): shape, stats, hashes, split."""
    rows = []
    for case_id in case_ids:
        attributes = case_attributes(store, case_id)
        spacing = attributes["spacing"]
        rows.append(
            {
                "case_id": case_id,
                "split": splits[case_id],
                **attributes["statistics"],
                "spacing_x": spacing[0],
                "spacing_y": spacing[1],
                "spacing_z": spacing[2],
                "modality": attributes["modality"],
                "image_sha256": attributes["source_sha256"]["image"],
                "label_sha256": attributes["source_sha256"]["label"],
                "image_path": attributes["source_files"]["image"],
                "label_path": attributes["source_files"]["label"],
                "config_hash": attributes["config_hash"],
            }
        )
    manifest = pd.DataFrame(rows)
    voxel_columns = [c for c in manifest.columns if c.startswith("label_") and c.endswith("_voxels")]
    manifest[voxel_columns] = manifest[voxel_columns].fillna(0).astype("int64")
    return manifest
