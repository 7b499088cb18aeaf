"""Builders for tiny real datasets on disk: NIfTI files with a non-identity (LPS-like) affine."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SPACING = (1.5, 1.2, 3.0)
ORIGIN = (40.0, 30.0, -20.0)


def lps_affine(spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    """An affine whose first two voxel axes run Left and Posterior (as DICOM-derived files often do)."""
    return np.array(
        [
            [-spacing[0], 0, 0, origin[0]],
            [0, -spacing[1], 0, origin[1]],
            [0, 0, spacing[2], origin[2]],
            [0, 0, 0, 1],
        ]
    )


def make_volume(rng: np.random.Generator, shape=(24, 20, 14), labels=(1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """An image with a bright ellipsoid 'body' and labelled blobs inside it; slices at both Z ends are empty."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (x**2 / 0.8 + y**2 / 0.8 + z**2 / 0.7) < 1
    image = np.where(body, 100.0 + 20 * rng.standard_normal(shape), 0.0).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for index, value in enumerate(labels):
        centre = (-0.3 + 0.6 * index, 0.1 * rng.standard_normal(), 0.0)
        blob = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) < 0.12
        label[blob & body] = value
        image[blob & body] += 60.0 * (index + 1)
    return image, label


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def write_msd_dataset(root: Path, cases: int = 3, seed: int = 0, shape=(24, 20, 14)) -> Path:
    """A Medical Segmentation Decathlon dataset (dataset.json, imagesTr, labelsTr)."""
    rng = np.random.default_rng(seed)
    training = []
    for index in range(cases):
        case_id = f"case_{index:03d}"
        image, label = make_volume(rng, shape)
        save(image, lps_affine(), root / "imagesTr" / f"{case_id}.nii.gz")
        save(label, lps_affine(), root / "labelsTr" / f"{case_id}.nii.gz")
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    meta = {
        "name": "test",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "one", "2": "two"},
        "numTraining": cases,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_nnunet_dataset(root: Path, cases: int = 3, seed: int = 0) -> Path:
    """An nnU-Net v2 raw dataset (channel_names, labels by name, `<case>_0000.nii.gz`)."""
    rng = np.random.default_rng(seed)
    for index in range(cases):
        image, label = make_volume(rng)
        save(image, lps_affine(), root / "imagesTr" / f"case_{index:03d}_0000.nii.gz")
        save(label, lps_affine(), root / "labelsTr" / f"case_{index:03d}.nii.gz")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "one": 1, "two": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_pairs_dataset(root: Path, cases: int = 3, seed: int = 0) -> Path:
    """A plain folder: `images/<case>.nii.gz` with `labels/<case>.nii.gz`."""
    rng = np.random.default_rng(seed)
    for index in range(cases):
        image, label = make_volume(rng)
        save(image, lps_affine(), root / "images" / f"case_{index:03d}.nii.gz")
        save(label, lps_affine(), root / "labels" / f"case_{index:03d}.nii.gz")
    return root


def recorded_synthetic_volume(
    index: int, files: dict[str, Path], setting: str = "icma", shape: tuple[int, int, int] = (8, 16, 16)
):
    """A small random synthetic volume whose plan and lineage record name `files` ("image", "label" sources and
    a "stage2" checkpoint): content and record follow from `index` alone, so separate writers build it alike."""
    from gem3d.lineage import CheckpointRef, LineageRecord, SourceFile, sha256_array, sha256_file
    from gem3d.synthesis import SynthesisPlan, SyntheticVolume

    rng = np.random.default_rng(index)
    image = rng.uniform(-1, 1, shape).astype(np.float32)
    mask = (rng.random(shape) > 0.7).astype(np.uint8)
    plan = SynthesisPlan.create(
        source_case_id="case_0",
        source_mask_sha256=sha256_array(mask),
        setting=setting,
        variant=index,
        seed=index,
        start_slice=0,
        informed={"mode": "chosen", "case_id": "case_0", "slice_index": 0},
        checkpoint_sha256=sha256_file(files["stage2"]),
        config_hash="0123456789abcdef",
    )
    record = LineageRecord(
        synthetic_id=plan.synthetic_id,
        source_case_id="case_0",
        source_files=[SourceFile(path=str(files[r]), sha256=sha256_file(files[r]), role=r) for r in ("image", "label")],
        checkpoints=[CheckpointRef(role="stage2", path=str(files["stage2"]), sha256=sha256_file(files["stage2"]))],
        sampler={"name": "ddim", "steps": 3, "eta": 1.0},
        start_slice=0,
        seed=index,
        created_at="2026-01-01T00:00:00+00:00",
    )
    return SyntheticVolume(plan, image, mask, record)
