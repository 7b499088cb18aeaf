"""The synthetic contract: each generated volume matches its mask's shape, is finite, in [-1, 1], not
constant, and carries its full lineage, before it is exported or used for augmentation."""

from __future__ import annotations

import pandas as pd
from great_expectations import expectations as gxe

from data_contracts.runner import ContractResult, required_columns, validate_table

MIN_IMAGE_STD = 1e-3
COLUMNS = (
    "synthetic_id",
    "shape_matches_mask",
    "nonfinite_voxels",
    "image_min",
    "image_max",
    "image_std",
    "lineage_missing",
)


def synthetic_contract(df: pd.DataFrame) -> ContractResult:
    """Validate per-volume statistics of generated images (one row per synthetic id)."""
    expectations = [
        *required_columns(COLUMNS),
        gxe.ExpectColumnValuesToBeUnique(column="synthetic_id"),
        gxe.ExpectColumnValuesToBeInSet(column="shape_matches_mask", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="nonfinite_voxels", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="image_min", min_value=-1),
        gxe.ExpectColumnValuesToBeBetween(column="image_max", max_value=1),
        gxe.ExpectColumnValuesToBeBetween(
            column="image_std",
            min_value=MIN_IMAGE_STD,
            strict_min=True,
            description=f"image_std must be > {MIN_IMAGE_STD} (the volume is constant)",
        ),
        gxe.ExpectColumnValuesToBeBetween(column="lineage_missing", min_value=0, max_value=0),
    ]
    return validate_table("synthetic", df, expectations, id_column="synthetic_id")
