"""The synthetic contract over per-volume statistics of generated images, keyed by synthetic_id."""

import pandas as pd
import pytest

from data_contracts import synthetic_contract


def _table(count: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "synthetic_id": [f"syn_{index:02d}" for index in range(count)],
            "shape_matches_mask": [True] * count,
            "nonfinite_voxels": [0] * count,
            "image_min": [-1.0 + 0.05 * index for index in range(count)],
            "image_max": [1.0 - 0.05 * index for index in range(count)],
            "image_std": [0.2 + 0.01 * index for index in range(count)],
            "lineage_missing": [0] * count,
        }
    )


def test_clean_batch_passes():
    result = synthetic_contract(_table())
    assert result.passed, result.failures
    assert result.contract == "synthetic"


CORRUPTIONS = [
    ("shape_matches_mask", False, "shape_matches_mask must be True; got False"),
    ("nonfinite_voxels", float("nan"), "nonfinite_voxels must not be missing (null or NaN)"),
    ("nonfinite_voxels", 40, "nonfinite_voxels must be 0; got 40"),
    ("image_min", -1.2, "image_min must be >= -1; got -1.2"),
    ("image_max", 3.0, "image_max must be <= 1; got 3.0"),
    ("image_std", 0.0, "image_std must be > 0.001 (the volume is constant); got 0.0"),
    ("lineage_missing", 2, "lineage_missing must be 0; got 2"),
]


def test_each_corrupted_volume_is_quarantined_by_synthetic_id():
    clean = 3
    table = _table(clean + len(CORRUPTIONS)).astype(object)
    for offset, (column, value, _) in enumerate(CORRUPTIONS):
        table.loc[clean + offset, column] = value
    result = synthetic_contract(table)
    assert not result.passed
    assert result.failed_case_ids == sorted(f"syn_{clean + offset:02d}" for offset in range(len(CORRUPTIONS)))
    for offset, (column, _, reason) in enumerate(CORRUPTIONS):
        failures = [failure for failure in result.failures if failure["case_id"] == f"syn_{clean + offset:02d}"]
        assert [(failure["column"], failure["reason"]) for failure in failures] == [(column, reason)]


def test_duplicated_synthetic_id_is_quarantined():
    table = _table(3)
    table.loc[2, "synthetic_id"] = "syn_00"
    result = synthetic_contract(table)
    assert result.failed_case_ids == ["syn_00"]
    assert {failure["column"] for failure in result.failures} == {"synthetic_id"}


def test_table_without_synthetic_id_is_rejected():
    with pytest.raises(ValueError, match="synthetic_id"):
        synthetic_contract(_table(3).drop(columns="synthetic_id"))
