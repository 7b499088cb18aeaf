"""The preprocessing flow end to end: real Prefect runs, real Zarr store, real GX validations, sqlite MLflow."""

import json

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.preprocess import preprocess_flow
from flows.validate import validate_store
from gem3d.export import export_case_nifti
from gem3d.splits import store_splits
from gem3d.store import MANIFEST, list_cases, read_manifest
from tasks.runners import make_task_runner
from tests.builders import lps_affine, make_volume, save, write_msd_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """A dataset of 4 good cases and 1 with NaN voxels, preprocessed once on a local Dask cluster."""
    root = tmp_path_factory.mktemp("flow")
    dataset = write_msd_dataset(root / "msd", cases=4)
    image, label = make_volume(np.random.default_rng(7))
    image[2, 2, 2] = np.nan
    save(image, lps_affine(), dataset / "imagesTr" / "broken.nii.gz")
    save(label, lps_affine(), dataset / "labelsTr" / "broken.nii.gz")
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/broken.nii.gz", "label": "./labelsTr/broken.nii.gz"})
    (dataset / "dataset.json").write_text(json.dumps(meta))
    (root / "config.yaml").write_text("data: {window_length: 4, in_plane_size: 16}\n")
    flow = preprocess_flow.with_options(task_runner=make_task_runner(None, 2))
    summary = flow(str(dataset), str(root / "store.zarr"), str(root / "config.yaml"), None, str(root))
    return root, dataset, summary


def test_good_cases_are_published_and_the_bad_one_quarantined_with_file_and_reason(preprocessed):
    root, _, summary = preprocessed
    store = root / "store.zarr"
    assert summary["published"] == 4 and summary["quarantined"] == 1
    assert list_cases(store) == ["case_000", "case_001", "case_002", "case_003"]
    quarantine = json.loads((store / "quarantine.json").read_text())
    assert quarantine[0]["case_id"] == "broken"
    assert quarantine[0]["path"].endswith("broken.nii.gz") and "NaN" in quarantine[0]["reason"]
    assert not any((root / ".store.zarr.staging").iterdir())


def test_manifest_has_one_row_per_case_with_splits_stats_and_hashes(preprocessed):
    root, _, _ = preprocessed
    manifest = read_manifest(root / "store.zarr")
    assert manifest["case_id"].tolist() == ["case_000", "case_001", "case_002", "case_003"]
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["shape_h"] == 16).all() and (manifest["image_max"] <= 1).all()
    assert manifest["image_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    assert json.loads((root / "store.zarr" / "validation" / "raw.json").read_text())["passed"] is False
    assert json.loads((root / "store.zarr" / "validation" / "preprocessed.json").read_text())["passed"] is True


def test_the_run_is_tracked_in_a_sqlite_mlflow_store(preprocessed):
    root, _, _ = preprocessed
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gem3d"], filter_string="tags.`gem3d.step` = 'preprocess'")
    assert len(runs) >= 1
    run = runs.iloc[0]
    assert run["metrics.cases_ok"] == 4 and run["metrics.quarantined"] == 1
    assert run["params.data.window_length"] == "4"
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "preprocess")]
    assert "preprocess/manifest.parquet" in artifacts and "preprocess/raw.json" in artifacts


def test_rerun_with_nothing_changed_skips_every_case(preprocessed):
    root, dataset, _ = preprocessed
    again = preprocess_flow(str(dataset), str(root / "store.zarr"), str(root / "config.yaml"), None, str(root))
    assert again["processed"] == 0 and again["skipped"] == 4 and again["published"] == 4


def test_a_growing_dataset_keeps_every_earlier_cases_split(tmp_path):
    dataset = write_msd_dataset(tmp_path / "msd", cases=4)
    (tmp_path / "config.yaml").write_text("data: {window_length: 4, in_plane_size: 16}\n")
    arguments = (str(tmp_path / "store.zarr"), str(tmp_path / "config.yaml"), None, str(tmp_path))
    preprocess_flow(str(dataset), *arguments)
    earlier = store_splits(tmp_path / "store.zarr")
    write_msd_dataset(tmp_path / "msd", cases=7)  # the same four cases (same seed) and three new ones
    grown = preprocess_flow(str(dataset), *arguments)
    splits = store_splits(tmp_path / "store.zarr")
    assert grown["processed"] == 3 and grown["skipped"] == 4
    assert sorted(splits) == [f"case_{index:03d}" for index in range(7)]
    assert {case_id: splits[case_id] for case_id in earlier} == earlier
    assert set(earlier.values()) == set(splits.values()) == {"train", "val", "test"}


def test_export_puts_a_known_world_point_on_the_same_label(preprocessed, tmp_path):
    root, dataset, _ = preprocessed
    original = nib.load(dataset / "labelsTr" / "case_001.nii.gz")
    data = np.asarray(original.dataobj)
    centre = np.argwhere(data == 2).mean(axis=0).round()
    world = original.affine @ np.array([*centre, 1.0])
    _, label_path = export_case_nifti(root / "store.zarr", "case_001", tmp_path)
    exported = nib.load(label_path)
    voxel = np.round(np.linalg.inv(exported.affine) @ world)[:3].astype(int)
    assert np.asarray(exported.dataobj)[tuple(voxel)] == 2
    assert nib.aff2axcodes(exported.affine) == ("R", "A", "S")


def test_validate_passes_on_the_store_and_fails_on_a_corrupted_manifest(preprocessed, tmp_path):
    root, _, _ = preprocessed
    store = root / "store.zarr"
    assert all(result.passed for result in validate_store(str(store)))
    runner = CliRunner()
    assert runner.invoke(app, ["validate", str(store)]).exit_code == 0
    manifest = pd.read_parquet(store / MANIFEST)
    try:
        corrupted = manifest.copy()
        corrupted.loc[1, "image_max"] = 3.0
        corrupted.loc[2, "case_id"] = corrupted.loc[0, "case_id"]
        corrupted.to_parquet(store / MANIFEST, index=False)
        results = validate_store(str(store))
        failed = {case for result in results for case in result.failed_case_ids}
        assert "case_001" in failed and not all(result.passed for result in results)
        outcome = runner.invoke(app, ["validate", str(store)])
        assert outcome.exit_code == 1 and "image_max" in outcome.output
    finally:
        manifest.to_parquet(store / MANIFEST, index=False)
