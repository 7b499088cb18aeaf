"""Dataset layouts: Medical Segmentation Decathlon, nnU-Net v2 raw, or a folder of image/label pairs.

`discover_dataset` detects the layout and returns case references; it reads no voxels. Problems that
belong to one case (a path leaving the dataset folder, a missing label file) are returned alongside
the good cases so the batch goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gem3d.errors import DatasetLayoutError, InputError, MissingFileError, PathOutsideDatasetError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CaseRef:
    """One case's source files; `channel` selects a channel of a 4D multi-channel image."""

    case_id: str
    image_path: Path
    label_path: Path
    channel: int | None = None
    split: str | None = None


@dataclass
class DatasetInfo:
    """What ingest needs to know about a dataset, before reading any voxels."""

    root: Path
    layout: Literal["msd", "nnunet", "pairs"]
    modality: str
    labels: dict[int, str]
    cases: list[CaseRef]
    problems: list[InputError] = field(default_factory=list)
    name: str = ""
    """The dataset's name: dataset.json "name" ("BrainTumour", "gem3d-phantom-brain"), else the folder's name."""


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _inside(root: Path, relative: str, owner: Path) -> Path:
    """Resolve a path from a dataset.json and refuse it when it leaves the dataset folder."""
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise PathOutsideDatasetError(owner, f"path {relative!r} resolves outside the dataset folder {root}")
    return resolved


def _select_channel(names: dict[str, str], channel: str | int | None, dataset_json: Path) -> tuple[int, str]:
    """Pick one channel by index or by (case-insensitive) name; single-channel datasets need none."""
    indexed = {int(key): value for key, value in names.items()}
    if channel is None:
        if len(indexed) == 1:
            return next(iter(indexed.items()))
        preferred = [index for index, name in indexed.items() if name.upper() == "FLAIR"]
        if preferred:
            return preferred[0], indexed[preferred[0]]
        raise DatasetLayoutError(
            dataset_json, f"multi-channel dataset {sorted(indexed.values())}: choose one with --channel"
        )
    if isinstance(channel, int) or str(channel).isdigit():
        index = int(channel)
        if index not in indexed:
            raise DatasetLayoutError(dataset_json, f"channel {index} not in {indexed}")
        return index, indexed[index]
    matches = [index for index, name in indexed.items() if name.lower() == str(channel).lower()]
    if not matches:
        raise DatasetLayoutError(dataset_json, f"channel {channel!r} not in {sorted(indexed.values())}")
    return matches[0], indexed[matches[0]]


def _modality_of(channel_name: str) -> str:
    return "CT" if channel_name.strip().upper() == "CT" else "MRI"


def _labels_from_msd(raw: dict) -> dict[int, str]:
    return {int(key): str(value) for key, value in raw.items()}


def _labels_from_nnunet(raw: dict) -> dict[int, str]:
    """nnU-Net v2 maps names to values (regions may be lists; only plain labels are supported)."""
    labels: dict[int, str] = {}
    for name, value in raw.items():
        if isinstance(value, list):
            continue
        labels[int(value)] = str(name)
    return labels


def _dataset_name(root: Path, meta: dict) -> str:
    """The dataset.json's "name" when it gives one, else the folder's name ("Task01_BrainTumour")."""
    name = meta.get("name")
    return name.strip() if isinstance(name, str) and name.strip() else root.name


def _discover_msd(root: Path, meta: dict, channel: str | int | None) -> DatasetInfo:
    dataset_json = root / "dataset.json"
    modalities = meta.get("modality") or {"0": "MRI"}
    index, name = _select_channel(modalities, channel, dataset_json)
    multi_channel = len(modalities) > 1
    cases: list[CaseRef] = []
    problems: list[InputError] = []
    for entry in meta.get("training", []):
        try:
            image = _inside(root, entry["image"], dataset_json)
            label = _inside(root, entry["label"], dataset_json)
        except InputError as error:
            problems.append(error)
            continue
        except (KeyError, TypeError):
            problems.append(DatasetLayoutError(dataset_json, f"training entry without image/label: {entry}"))
            continue
        case_id = strip_nifti_suffix(image.name)
        if not label.exists():
            problems.append(MissingFileError(label, f"label file of case {case_id} does not exist"))
            continue
        cases.append(CaseRef(case_id, image, label, channel=index if multi_channel else None))
    labels = _labels_from_msd(meta["labels"])
    return DatasetInfo(root, "msd", _modality_of(name), labels, cases, problems, _dataset_name(root, meta))


def _discover_nnunet(root: Path, meta: dict, channel: str | int | None) -> DatasetInfo:
    dataset_json = root / "dataset.json"
    index, name = _select_channel(meta["channel_names"], channel, dataset_json)
    ending = meta.get("file_ending", ".nii.gz")
    images_dir = _inside(root, "imagesTr", dataset_json)
    labels_dir = _inside(root, "labelsTr", dataset_json)
    cases: list[CaseRef] = []
    problems: list[InputError] = []
    suffix = f"_{index:04d}{ending}"
    for image in sorted(images_dir.glob(f"*{suffix}")):
        case_id = image.name[: -len(suffix)]
        label = labels_dir / f"{case_id}{ending}"
        if not label.exists():
            problems.append(MissingFileError(label, f"label file of case {case_id} does not exist"))
            continue
        cases.append(CaseRef(case_id, image.resolve(), label.resolve()))
    labels = _labels_from_nnunet(meta["labels"])
    return DatasetInfo(root, "nnunet", _modality_of(name), labels, cases, problems, _dataset_name(root, meta))


def _discover_pairs(root: Path) -> DatasetInfo:
    """Images and labels matched by name: `images/X.nii.gz` + `labels/X.nii.gz`, or `X.nii.gz` + `X_label.nii.gz`."""
    pairs: list[tuple[str, Path, Path]] = []
    problems: list[InputError] = []
    if (root / "images").is_dir():
        for image in sorted(p for p in (root / "images").iterdir() if p.name.endswith(NIFTI_SUFFIXES)):
            case_id = strip_nifti_suffix(image.name)
            candidates = [root / "labels" / f"{case_id}{suffix}" for suffix in NIFTI_SUFFIXES]
            label = next((path for path in candidates if path.exists()), None)
            if label is None:
                problems.append(MissingFileError(candidates[0], f"no label file for image {image.name}"))
                continue
            pairs.append((case_id, image, label))
    else:
        files = sorted(p for p in root.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        stems = {strip_nifti_suffix(p.name): p for p in files}
        for stem, image in stems.items():
            if stem.endswith(("_label", "_seg", "_mask")):
                continue
            label = next(
                (stems[f"{stem}{tag}"] for tag in ("_label", "_seg", "_mask") if f"{stem}{tag}" in stems),
                None,
            )
            if label is None:
                problems.append(MissingFileError(image, "no matching label file (<name>_label.nii.gz)"))
                continue
            pairs.append((stem, image, label))
    if not pairs and not problems:
        raise DatasetLayoutError(root, "no dataset.json and no NIfTI image/label pairs found")
    cases = [CaseRef(case_id, image.resolve(), label.resolve()) for case_id, image, label in pairs]
    return DatasetInfo(root, "pairs", "MRI", {}, cases, problems, root.name)


def discover_dataset(root: str | Path, channel: str | int | None = None) -> DatasetInfo:
    """Detect the layout of `root` and list its cases (MSD, nnU-Net v2 raw, or image/label pairs)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetLayoutError(root, "dataset folder does not exist")
    dataset_json = root / "dataset.json"
    if not dataset_json.exists():
        return _discover_pairs(root)
    try:
        meta = json.loads(dataset_json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(dataset_json, f"unreadable dataset.json: {error}") from error
    if "channel_names" in meta:
        return _discover_nnunet(root, meta, channel)
    if "training" in meta and "labels" in meta:
        return _discover_msd(root, meta, channel)
    raise DatasetLayoutError(dataset_json, "neither MSD (training, labels) nor nnU-Net v2 (channel_names)")
