"""The training-ready contract: the manifest as a whole can feed training, i.e. every case holds a full
window, images are in [-1, 1], train and val are both non-empty, and one config built every case."""

from __future__ import annotations

import pandas as pd
from great_expectations import expectations as gxe

from data_contracts.runner import ContractResult, required_columns, validate_table
from gem3d.splits import TRAINING_SPLITS

COLUMNS = ("case_id", "split", "shape_z", "shape_h", "shape_w", "image_min", "image_max", "config_hash")


def training_ready_contract(manifest: pd.DataFrame, window_length: int, in_plane_size: int) -> ContractResult:
    """Validate that the store manifest can start a training run with this window length and size."""
    expectations = [
        *required_columns(COLUMNS),
        gxe.ExpectColumnValuesToBeUnique(column="case_id"),
        gxe.ExpectColumnValuesToBeBetween(column="shape_z", min_value=window_length),
        gxe.ExpectColumnValuesToBeBetween(column="shape_h", min_value=in_plane_size, max_value=in_plane_size),
        gxe.ExpectColumnValuesToBeBetween(column="shape_w", min_value=in_plane_size, max_value=in_plane_size),
        gxe.ExpectColumnValuesToBeBetween(column="image_min", min_value=-1),
        gxe.ExpectColumnValuesToBeBetween(column="image_max", max_value=1),
        gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(TRAINING_SPLITS)),
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column="config_hash",
            min_value=1,
            max_value=1,
            description="all cases must share one config_hash (the store mixes preprocessing configs)",
        ),
    ]
    return validate_table("training_ready", manifest, expectations)
