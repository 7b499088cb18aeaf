"""Export of synthetic volumes (source affine and units) and of an nnU-Net v2 raw dataset of real + synthetic."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import zarr

from gem3d.export import export_case_nifti, export_nnunet_dataset, export_synthetic_nifti
from gem3d.io.layouts import discover_dataset
from gem3d.lineage import LineageRecord
from gem3d.preprocess import denormalise_intensity, stored_to_ras
from gem3d.store import case_attributes, read_case, read_manifest
from gem3d.synthesis import SyntheticVolume, plan_test_regeneration
from gem3d.synthetic_store import write_synthetic
from tests.synthesis import CONFIG, build_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real store (case_003 moved 25 mm, so source affines differ) and a synthetic store holding two
    volumes with known intensity ramps."""
    root = tmp_path_factory.mktemp("export")
    real = build_store(root)
    moved = zarr.open_group(real / "cases" / "case_003", mode="a")
    affine = np.asarray(moved.attrs["affine"])
    affine[:3, 3] += 25.0
    moved.attrs["affine"] = affine.tolist()
    plans = plan_test_regeneration(real, ["case_000", "case_003"], CONFIG, "a" * 64, "c" * 16)
    volumes = []
    for plan in plans:
        _, label = read_case(real, plan.source_case_id)
        image = np.linspace(-1, 1, label.size, dtype=np.float32).reshape(label.shape)
        record = LineageRecord(synthetic_id=plan.synthetic_id, source_case_id=plan.source_case_id)
        volumes.append(SyntheticVolume(plan, image, label, record))
    synthetic = root / "synthetic.zarr"
    write_synthetic(synthetic, volumes)
    return real, synthetic, volumes


def test_synthetic_nifti_carries_the_source_affine_and_source_units(tmp_path, stores):
    real, synthetic, volumes = stores
    written = export_synthetic_nifti(synthetic, real, tmp_path)
    assert len(written) == len(volumes)
    by_id = {volume.plan.synthetic_id: volume for volume in volumes}
    for image_path, label_path in written:
        volume = by_id[image_path.name.removesuffix("_image.nii.gz")]
        source = case_attributes(real, volume.plan.source_case_id)
        image, label = nib.load(image_path), nib.load(label_path)
        np.testing.assert_allclose(image.affine, np.asarray(source["affine"]), atol=1e-4)
        np.testing.assert_allclose(label.affine, np.asarray(source["affine"]), atol=1e-4)
        expected = stored_to_ras(denormalise_intensity(volume.image, source["normalisation"]))
        np.testing.assert_allclose(image.get_fdata(), expected, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(label.dataobj), stored_to_ras(volume.mask))
    sources = [case_attributes(real, volume.plan.source_case_id) for volume in volumes]
    assert sources[0]["normalisation"] != sources[1]["normalisation"]
    assert not np.allclose(sources[0]["affine"], sources[1]["affine"])


def test_synthetic_nifti_can_stay_in_model_units(tmp_path, stores):
    real, synthetic, volumes = stores
    [(image_path, _), _] = export_synthetic_nifti(synthetic, real, tmp_path, original_units=False)
    values = nib.load(image_path).get_fdata()
    assert values.min() == pytest.approx(-1, abs=1e-6) and values.max() == pytest.approx(1, abs=1e-6)


def test_case_export_still_writes_real_cases_in_source_units(tmp_path, stores):
    real, _, _ = stores
    image_path, label_path = export_case_nifti(real, "case_001", tmp_path)
    attributes = case_attributes(real, "case_001")
    image, label = read_case(real, "case_001")
    expected = stored_to_ras(denormalise_intensity(image, attributes["normalisation"]))
    np.testing.assert_allclose(nib.load(image_path).get_fdata(), expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(nib.load(label_path).dataobj), stored_to_ras(label))


def test_nnunet_dataset_reads_back_with_real_training_cases_and_synthetic_ones(tmp_path, stores):
    real, synthetic, volumes = stores
    manifest = read_manifest(real)
    training = sorted(manifest.loc[manifest["split"].isin(["train", "val"]), "case_id"])
    testing = sorted(manifest.loc[manifest["split"] == "test", "case_id"])
    synthetic_ids = sorted(volume.plan.synthetic_id for volume in volumes)
    folder = export_nnunet_dataset(real, synthetic, tmp_path, 7, "gem3dTiny")
    assert folder == tmp_path / "Dataset007_gem3dTiny"
    info = discover_dataset(folder)
    assert info.layout == "nnunet" and info.problems == []
    assert sorted(case.case_id for case in info.cases) == sorted(training + synthetic_ids)
    assert info.labels == {0: "background", 1: "one", 2: "two"} and info.modality == "MRI"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "one": 1, "two": 2}
    assert meta["numTraining"] == len(training) + len(synthetic_ids)
    assert sorted(path.name for path in (folder / "imagesTs").iterdir()) == [f"{case}_0000.nii.gz" for case in testing]
    assert sorted(path.name for path in (folder / "labelsTs").iterdir()) == [f"{case}.nii.gz" for case in testing]
    volume = volumes[0]
    exported = nib.load(folder / "imagesTr" / f"{volume.plan.synthetic_id}_0000.nii.gz")
    source = case_attributes(real, volume.plan.source_case_id)
    np.testing.assert_allclose(exported.affine, np.asarray(source["affine"]), atol=1e-4)
    expected = stored_to_ras(denormalise_intensity(volume.image, source["normalisation"]))
    np.testing.assert_allclose(exported.get_fdata(), expected, rtol=1e-5, atol=1e-3)


def test_nnunet_reexport_without_synthetic_cases_drops_them(tmp_path, stores):
    real, synthetic, _ = stores
    export_nnunet_dataset(real, synthetic, tmp_path, 8, "mixed")
    folder = export_nnunet_dataset(real, None, tmp_path, 8, "mixed")
    manifest = read_manifest(real)
    training = sorted(manifest.loc[manifest["split"] != "test", "case_id"])
    assert sorted(case.case_id for case in discover_dataset(folder).cases) == training
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == len(training)
    assert len(list((folder / "labelsTr").iterdir())) == len(training)


@pytest.mark.parametrize(("dataset_id", "name"), [(0, "ok"), (1000, "ok"), (5, "has space")])
def test_nnunet_dataset_id_and_name_are_checked(tmp_path, stores, dataset_id, name):
    real, _, _ = stores
    with pytest.raises(ValueError):
        export_nnunet_dataset(real, None, tmp_path, dataset_id, name)
