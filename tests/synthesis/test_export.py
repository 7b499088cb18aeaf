"""Export of synthetic volumes (source affine and units) and of an nnU-Net v2 raw dataset of real + synthetic,
whose training data never holds a synthetic volume derived from a test case."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from flows.cli import app
from gem3d.editing import AppliedEdit
from gem3d.export import export_case_nifti, export_nnunet_dataset, export_synthetic_nifti, synthetic_splits
from gem3d.io.layouts import discover_dataset
from gem3d.lineage import InformedSliceRef, LineageRecord
from gem3d.preprocess import denormalise_intensity, stored_to_ras
from gem3d.splits import SPLITS, TRAINING_SPLITS, cases_of_split
from gem3d.store import case_attributes, read_case, read_manifest
from gem3d.synthesis import SyntheticVolume, plan_counterfactual, plan_test_regeneration
from gem3d.synthetic_store import read_synthetic, write_synthetic
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


def _record(plan) -> LineageRecord:
    """The lineage a generated volume of `plan` records about its sources: mask, informed slice, edits."""
    informed = InformedSliceRef(
        mode=plan.informed.mode, case_id=plan.informed.case_id, slice_index=plan.informed.slice_index
    )
    edits = [AppliedEdit(edit=edit, sampled={}).to_dict() for edit in plan.edits]
    return LineageRecord(
        synthetic_id=plan.synthetic_id, source_case_id=plan.source_case_id, informed_slice=informed, mask_edits=edits
    )


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, stores):
    """A synthetic store whose volumes derive from train, val and test cases in every way lineage records:
    returns (real store, synthetic store, {kind: synthetic_id})."""
    real, _, _ = stores
    manifest = read_manifest(real)
    (train_a, train_b, *_), (val, *_), (test, *_) = (cases_of_split(manifest, split) for split in SPLITS)
    plans = {
        "train": plan_counterfactual(real, train_a, train_b, [], CONFIG, "a" * 64, "c" * 16),
        "val": plan_counterfactual(real, val, train_a, [], CONFIG, "a" * 64, "c" * 16),
        "test_mask": plan_test_regeneration(real, [test], CONFIG, "a" * 64, "c" * 16),
        "test_slice": plan_counterfactual(real, train_a, test, [], CONFIG, "a" * 64, "c" * 16),
        "test_paste": plan_counterfactual(real, train_b, train_a, [f"paste:{test}:1"], CONFIG, "a" * 64, "c" * 16),
    }
    volumes, ids = [], {}
    for kind, [plan] in plans.items():
        _, label = read_case(real, plan.source_case_id)
        image = np.linspace(-1, 1, label.size, dtype=np.float32).reshape(label.shape)
        volumes.append(SyntheticVolume(plan, image, label, _record(plan)))
        ids[kind] = plan.synthetic_id
    synthetic = tmp_path_factory.mktemp("mixed") / "synthetic.zarr"
    write_synthetic(synthetic, volumes)
    return real, synthetic, ids


def test_a_synthetic_volume_takes_the_split_of_every_case_it_derives_from(mixed):
    real, synthetic, ids = mixed
    derived = synthetic_splits(synthetic, real)
    assert {kind: derived[synthetic_id] for kind, synthetic_id in ids.items()} == {
        "train": "train",
        "val": "val",
        "test_mask": "test",
        "test_slice": "test",
        "test_paste": "test",
    }


def test_nnunet_training_data_holds_no_synthetic_volume_derived_from_a_test_case(tmp_path, mixed):
    real, synthetic, ids = mixed
    manifest = read_manifest(real)
    training = cases_of_split(manifest, *TRAINING_SPLITS)
    testing = cases_of_split(manifest, "test")
    result = export_nnunet_dataset(real, synthetic, tmp_path, 7, "gem3dTiny")
    folder = result.folder
    assert folder == tmp_path / "Dataset007_gem3dTiny"
    info = discover_dataset(folder)
    assert info.layout == "nnunet" and info.problems == []
    assert sorted(case.case_id for case in info.cases) == sorted([*training, ids["train"], ids["val"]])
    assert sorted(path.name for path in (folder / "labelsTr").iterdir()) == sorted(
        f"{case}.nii.gz" for case in [*training, ids["train"], ids["val"]]
    )
    assert sorted(path.name for path in (folder / "imagesTs").iterdir()) == [f"{case}_0000.nii.gz" for case in testing]
    assert sorted(path.name for path in (folder / "labelsTs").iterdir()) == [f"{case}.nii.gz" for case in testing]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == len(list((folder / "imagesTr").iterdir())) == len(training) + 2
    assert meta["channel_names"] == {"0": "MRI"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "one": 1, "two": 2}
    assert info.labels == {0: "background", 1: "one", 2: "two"} and info.modality == "MRI"
    assert result.held_out == {"test": 3} and result.num_training == meta["numTraining"]
    assert "3 synthetic volumes derived from test cases left out of training data" in result.summary()


def test_exported_synthetic_training_volume_has_its_source_affine_and_units(tmp_path, mixed):
    real, synthetic, ids = mixed
    folder = export_nnunet_dataset(real, synthetic, tmp_path, 7, "gem3dTiny").folder
    image, _, record = read_synthetic(synthetic, ids["val"])
    exported = nib.load(folder / "imagesTr" / f"{ids['val']}_0000.nii.gz")
    source = case_attributes(real, record.source_case_id)
    np.testing.assert_allclose(exported.affine, np.asarray(source["affine"]), atol=1e-4)
    expected = stored_to_ras(denormalise_intensity(image, source["normalisation"]))
    np.testing.assert_allclose(exported.get_fdata(), expected, rtol=1e-5, atol=1e-3)


def test_held_out_synthetic_volumes_are_written_on_request_outside_the_dataset(tmp_path, mixed):
    real, synthetic, ids = mixed
    held_out = tmp_path / "held_out"
    result = export_nnunet_dataset(real, synthetic, tmp_path / "nnunet", 7, "gem3dTiny", held_out_dir=held_out)
    left_out = [ids[kind] for kind in ("test_mask", "test_slice", "test_paste")]
    expected = sorted(f"{synthetic_id}_{part}.nii.gz" for synthetic_id in left_out for part in ("image", "label"))
    assert sorted(path.name for path in held_out.iterdir()) == expected
    exported = [path.name for path in result.folder.rglob("*.nii.gz")]
    assert not any(synthetic_id in name for synthetic_id in left_out for name in exported)
    assert result.held_out_folder == held_out and str(held_out) in result.summary()
    with pytest.raises(ValueError, match="outside the dataset folder"):
        export_nnunet_dataset(real, synthetic, tmp_path / "nnunet", 7, "gem3dTiny", held_out_dir=result.folder / "x")


def test_cli_export_prints_how_many_synthetic_volumes_were_left_out(tmp_path, mixed):
    real, synthetic, ids = mixed
    held_out = tmp_path / "held_out"
    arguments = ["export", "--store", str(real), "--synthetic", str(synthetic), "--out", str(tmp_path / "nnunet")]
    outcome = CliRunner().invoke(app, [*arguments, "--format", "nnunet", "--held-out-synthetic", str(held_out)])
    assert outcome.exit_code == 0, outcome.output
    assert "3 synthetic volumes derived from test cases left out of training data" in outcome.output
    assert len(list(held_out.glob("*_image.nii.gz"))) == 3
    assert not (tmp_path / "nnunet" / "Dataset501_GEM3D" / "imagesTr" / f"{ids['test_mask']}_0000.nii.gz").exists()


def test_nnunet_reexport_without_synthetic_cases_drops_them(tmp_path, stores):
    real, synthetic, _ = stores
    export_nnunet_dataset(real, synthetic, tmp_path, 8, "mixed")
    folder = export_nnunet_dataset(real, None, tmp_path, 8, "mixed").folder
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
