"""The preprocessed contract: every case in the store manifest has the configured in-plane size, enough
slices for one window, images in [-1, 1] with no NaN/inf, labels within the classes, and content hashes."""

from __future__ import annotations

import pandas as pd
from great_expectations import expectations as gxe

from data_contracts.runner import ContractResult, required_columns, validate_table
from gem3d.splits import SPLITS

SHA256_REGEX = r"^[0-9a-f]{64}$"
CONFIG_HASH_REGEX = r"^[0-9a-f]{16,64}$"
COLUMNS = (
    "case_id",
    "split",
    "shape_z",
    "shape_h",
    "shape_w",
    "image_min",
    "image_max",
    "image_mean",
    "image_std",
    "nonfinite_voxels",
    "label_max",
    "foreground_voxels",
    "image_sha256",
    "label_sha256",
    "config_hash",
)


def preprocessed_contract(
    manifest: pd.DataFrame, in_plane_size: int, window_length: int, num_classes: int
) -> ContractResult:
    """Validate the store manifest (one row per case) against the preprocessing config it was built with."""
    expectations = [
        *required_columns(COLUMNS),
        gxe.ExpectColumnValuesToBeUnique(column="case_id"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gxe.ExpectColumnValuesToBeBetween(column="shape_h", min_value=in_plane_size, max_value=in_plane_size),
        gxe.ExpectColumnValuesToBeBetween(column="shape_w", min_value=in_plane_size, max_value=in_plane_size),
        gxe.ExpectColumnValuesToBeBetween(column="shape_z", min_value=window_length),
        gxe.ExpectColumnValuesToBeBetween(column="image_min", min_value=-1),
        gxe.ExpectColumnValuesToBeBetween(column="image_max", max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="nonfinite_voxels", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="label_max", min_value=0, max_value=num_classes, strict_max=True),
        gxe.ExpectColumnValuesToBeBetween(column="foreground_voxels", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToMatchRegex(column="image_sha256", regex=SHA256_REGEX),
        gxe.ExpectColumnValuesToMatchRegex(column="label_sha256", regex=SHA256_REGEX),
        gxe.ExpectColumnValuesToMatchRegex(column="config_hash", regex=CONFIG_HASH_REGEX),
    ]
    return validate_table("preprocessed", manifest, expectations)
