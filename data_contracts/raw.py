"""The raw contract: every case in the ingest inventory is readable, 3-D, geometrically consistent and
labelled only with declared classes, before anything is preprocessed."""

from __future__ import annotations

import pandas as pd
from great_expectations import expectations as gxe

from data_contracts.runner import ContractResult, required_columns, validate_table

COLUMNS = (
    "case_id",
    "image_path",
    "label_path",
    "readable",
    "image_ndim",
    "label_ndim",
    "image_shape",
    "label_shape",
    "shapes_match",
    "affines_match",
    "spacing_min",
    "label_max",
    "labels_outside_declared",
    "nonfinite_voxels",
)


def raw_contract(df: pd.DataFrame, declared_labels: set[int]) -> ContractResult:
    """Validate the ingest inventory (one row per case); `declared_labels` are the dataset's label values."""
    if not declared_labels:
        raise ValueError("declared_labels must name at least one label value")
    label_values = sorted(int(value) for value in declared_labels)
    expectations = [
        *required_columns(COLUMNS),
        gxe.ExpectColumnValuesToBeUnique(column="case_id"),
        gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="image_ndim", min_value=3, max_value=3),
        gxe.ExpectColumnValuesToBeBetween(column="label_ndim", min_value=3, max_value=3),
        gxe.ExpectColumnValuesToBeInSet(column="shapes_match", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="affines_match", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="spacing_min", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeInSet(column="label_max", value_set=label_values),
        gxe.ExpectColumnValuesToBeBetween(column="labels_outside_declared", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="nonfinite_voxels", min_value=0, max_value=0),
    ]
    return validate_table("raw", df, expectations)
