"""The training-ready contract: whole-manifest checks (both splits present, one config) fail the contract
with a plain reason and quarantine nobody; per-case checks still name the case."""

import pandas as pd

from data_contracts import training_ready_contract
from data_contracts.runner import quarantine_list

WINDOW, IN_PLANE = 8, 32


def _manifest() -> pd.DataFrame:
    count = 5
    return pd.DataFrame(
        {
            "case_id": [f"case_{index}" for index in range(count)],
            "split": ["train", "train", "train", "val", "test"],
            "shape_z": [WINDOW, 10, 12, 9, 16],
            "shape_h": [IN_PLANE] * count,
            "shape_w": [IN_PLANE] * count,
            "image_min": [-1.0] * count,
            "image_max": [1.0] * count,
            "config_hash": ["0123456789abcdef"] * count,
        }
    )


def _validate(manifest: pd.DataFrame):
    return training_ready_contract(manifest, window_length=WINDOW, in_plane_size=IN_PLANE)


def test_ready_manifest_passes():
    result = _validate(_manifest())
    assert result.passed, result.failures
    assert result.contract == "training_ready"


def test_empty_val_split_fails_the_contract_and_says_so():
    manifest = _manifest()
    manifest.loc[3, "split"] = "train"
    result = _validate(manifest)
    assert not result.passed
    assert quarantine_list(result) == []
    assert [(failure["case_id"], failure["column"]) for failure in result.failures] == [(None, "split")]
    assert "split 'val' is empty" in result.failures[0]["reason"]


def test_missing_train_and_val_are_both_named():
    manifest = _manifest().assign(split="test")
    reason = _validate(manifest).failures[0]["reason"]
    assert "split 'train' is empty" in reason
    assert "split 'val' is empty" in reason


def test_mixed_config_hashes_fail_the_contract():
    manifest = _manifest()
    manifest.loc[4, "config_hash"] = "fedcba9876543210"
    result = _validate(manifest)
    assert not result.passed
    assert result.failed_case_ids == []
    assert result.failures[0]["column"] == "config_hash"
    assert result.failures[0]["reason"] == (
        "all cases must share one config_hash (the store mixes preprocessing configs); found 2 distinct values"
    )


def test_case_shorter_than_a_window_is_quarantined():
    manifest = _manifest()
    manifest.loc[1, "shape_z"] = WINDOW - 3
    manifest.loc[2, "image_max"] = 1.01
    result = _validate(manifest)
    assert result.failed_case_ids == ["case_1", "case_2"]
    assert {failure["column"] for failure in result.failures} == {"shape_z", "image_max"}
