"""The raw contract over the ingest inventory: clean inventories pass, each corruption quarantines its case."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data_contracts import raw_contract
from gem3d.errors import InputError
from gem3d.io.layouts import CaseRef
from gem3d.io.nifti import inventory_row, load_case

DECLARED = {0, 1, 2}


def _inventory(count: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": [f"case_{index}" for index in range(count)],
            "image_path": [f"/data/imagesTr/case_{index}.nii.gz" for index in range(count)],
            "label_path": [f"/data/labelsTr/case_{index}.nii.gz" for index in range(count)],
            "readable": [True] * count,
            "image_ndim": [3] * count,
            "label_ndim": [3] * count,
            "image_shape": ["96x96x48"] * count,
            "label_shape": ["96x96x48"] * count,
            "shapes_match": [True] * count,
            "affines_match": [True] * count,
            "spacing_min": [0.8] * count,
            "label_max": [2] * count,
            "labels_outside_declared": [0] * count,
            "nonfinite_voxels": [0] * count,
        }
    )


def test_clean_inventory_passes():
    result = raw_contract(_inventory(), DECLARED)
    assert result.passed, result.failures
    assert result.contract == "raw"
    assert result.failed_case_ids == []


CORRUPTIONS = [
    ("nonfinite_voxels", float("nan"), "nonfinite_voxels must not be missing (null or NaN)"),
    ("nonfinite_voxels", 12, "nonfinite_voxels must be 0; got 12"),
    ("readable", False, "readable must be True; got False"),
    ("image_ndim", 4, "image_ndim must be 3; got 4"),
    ("label_ndim", 2, "label_ndim must be 3; got 2"),
    ("shapes_match", False, "shapes_match must be True; got False"),
    ("affines_match", False, "affines_match must be True; got False"),
    ("spacing_min", 0.0, "spacing_min must be > 0; got 0.0"),
    ("label_max", 7, "label_max must be one of [0, 1, 2]; got 7"),
    ("labels_outside_declared", 1, "labels_outside_declared must be 0; got 1"),
]


def test_each_corrupted_row_quarantines_its_case_with_a_reason_naming_the_column():
    clean = 2
    inventory = _inventory(clean + len(CORRUPTIONS)).astype(object)
    for offset, (column, value, _) in enumerate(CORRUPTIONS):
        inventory.loc[clean + offset, column] = value
    result = raw_contract(inventory, DECLARED)
    assert not result.passed
    assert result.failed_case_ids == sorted(f"case_{clean + offset}" for offset in range(len(CORRUPTIONS)))
    for offset, (column, _, reason) in enumerate(CORRUPTIONS):
        failures = [failure for failure in result.failures if failure["case_id"] == f"case_{clean + offset}"]
        assert [(failure["column"], failure["reason"]) for failure in failures] == [(column, reason)]


def test_duplicated_case_id_quarantines_both_rows():
    inventory = _inventory()
    inventory.loc[2, "case_id"] = "case_0"
    result = raw_contract(inventory, DECLARED)
    assert result.failed_case_ids == ["case_0"]
    assert [failure["reason"] for failure in result.failures] == ["case_id must be unique; got 'case_0'"] * 2


def test_empty_declared_labels_are_rejected():
    with pytest.raises(ValueError, match="declared_labels"):
        raw_contract(_inventory(), set())


def _write_nifti(path, data):
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), path)


def test_inventory_built_from_real_files_quarantines_the_broken_case(tmp_path):
    rng = np.random.default_rng(0)
    refs = []
    for index in range(3):
        image = rng.normal(size=(6, 6, 4)).astype(np.float32)
        label = rng.integers(0, 3, size=(6, 6, 4)).astype(np.uint8)
        if index == 2:
            image = image[:, :, 0]
        refs.append(CaseRef(f"case_{index}", tmp_path / f"img_{index}.nii.gz", tmp_path / f"lbl_{index}.nii.gz"))
        _write_nifti(refs[-1].image_path, image)
        _write_nifti(refs[-1].label_path, label)
    rows = []
    for ref in refs:
        try:
            rows.append(inventory_row(ref, load_case(ref, DECLARED), None))
        except InputError as error:
            rows.append(inventory_row(ref, None, error))
    result = raw_contract(pd.DataFrame(rows), DECLARED)
    assert not result.passed
    assert result.failed_case_ids == ["case_2"]
    assert any(failure["column"] == "readable" for failure in result.failures)
