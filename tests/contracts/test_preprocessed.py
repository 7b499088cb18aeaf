"""The preprocessed contract over the store manifest: a manifest built with the config passes, each
corruption quarantines its case with a reason naming the column."""

import hashlib

import pandas as pd

from data_contracts import preprocessed_contract

IN_PLANE, WINDOW, CLASSES = 32, 8, 3


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest(count: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": [f"case_{index}" for index in range(count)],
            "split": (["train", "train", "val", "test"] * count)[:count],
            "shape_z": [12 + index for index in range(count)],
            "shape_h": [IN_PLANE] * count,
            "shape_w": [IN_PLANE] * count,
            "image_min": [-1.0] * count,
            "image_max": [0.98] * count,
            "image_mean": [-0.4] * count,
            "image_std": [0.3] * count,
            "nonfinite_voxels": [0] * count,
            "label_max": [2] * count,
            "foreground_voxels": [150] * count,
            "image_sha256": [_sha(f"image {index}") for index in range(count)],
            "label_sha256": [_sha(f"label {index}") for index in range(count)],
            "config_hash": ["0123456789abcdef"] * count,
        }
    )


def _validate(manifest: pd.DataFrame):
    return preprocessed_contract(manifest, in_plane_size=IN_PLANE, window_length=WINDOW, num_classes=CLASSES)


def test_clean_manifest_passes():
    result = _validate(_manifest())
    assert result.passed, result.failures
    assert result.contract == "preprocessed"


CORRUPTIONS = [
    ("shape_h", 31, "shape_h must be 32; got 31"),
    ("shape_w", 64, "shape_w must be 32; got 64"),
    ("shape_z", WINDOW - 1, "shape_z must be >= 8; got 7"),
    ("image_max", 1.5, "image_max must be <= 1; got 1.5"),
    ("image_min", float("-inf"), "image_min must be >= -1; got -inf"),
    ("image_std", float("nan"), "image_std must not be missing (null or NaN)"),
    ("nonfinite_voxels", 3, "nonfinite_voxels must be 0; got 3"),
    ("label_max", CLASSES, "label_max must be >= 0 and < 3; got 3"),
    ("foreground_voxels", 0, "foreground_voxels must be > 0; got 0"),
    ("split", "holdout", "split must be one of ['train', 'val', 'test']; got 'holdout'"),
    ("image_sha256", "abc123", "image_sha256 must match '^[0-9a-f]{64}$'; got 'abc123'"),
    ("label_sha256", None, "label_sha256 must not be missing (null or NaN)"),
    ("config_hash", "NOT-A-HASH", "config_hash must match '^[0-9a-f]{16,64}$'; got 'NOT-A-HASH'"),
]


def test_each_corrupted_row_quarantines_its_case_with_a_reason_naming_the_column():
    clean = 4
    manifest = _manifest(clean + len(CORRUPTIONS)).astype(object)
    for offset, (column, value, _) in enumerate(CORRUPTIONS):
        manifest.loc[clean + offset, column] = value
    result = _validate(manifest)
    assert not result.passed
    assert result.failed_case_ids == sorted(f"case_{clean + offset}" for offset in range(len(CORRUPTIONS)))
    for offset, (column, _, reason) in enumerate(CORRUPTIONS):
        failures = [failure for failure in result.failures if failure["case_id"] == f"case_{clean + offset}"]
        assert [(failure["column"], failure["reason"]) for failure in failures] == [(column, reason)]


def test_duplicated_case_id_quarantines_it():
    manifest = _manifest()
    manifest.loc[3, "case_id"] = "case_1"
    result = _validate(manifest)
    assert result.failed_case_ids == ["case_1"]
    assert {failure["column"] for failure in result.failures} == {"case_id"}


def test_several_bad_cases_are_all_quarantined():
    manifest = _manifest()
    manifest.loc[0, "image_max"] = 2.0
    manifest.loc[3, "shape_z"] = 2
    result = _validate(manifest)
    assert result.failed_case_ids == ["case_0", "case_3"]
    assert result.statistics["unsuccessful_expectations"] == 2
