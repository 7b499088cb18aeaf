"""The synthetic contract: each generated volume matches its mask's shape, is finite, in [-1, 1], not constant,
carries its full lineage, came out of the sampler without blowing up, and looks like the real training cases
label by label, before it is exported or used for augmentation.

Synthesis clips volumes to [-1, 1], so the range after the clip cannot fail; what can go wrong shows before it
(`unclamped_min`, `unclamped_max`, `clamped_fraction`) and in the intensities inside the labels. Rows of volumes
not made by `synthesize` (read back from a store, built by hand) have no record of their values before the clip:
`clamp_recorded` is False there and those columns are not checked; when it is True they must be present.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from great_expectations import expectations as gxe

from data_contracts.runner import ContractResult, required_columns, validate_table
from gem3d.config import SyntheticContractConfig

MIN_IMAGE_STD = 1e-3
DEFAULT_LIMITS = SyntheticContractConfig()
"""The stated bounds (`gem3d.config.SyntheticContractConfig`); a run passes its config's."""
UNCLAMPED_LIMIT = DEFAULT_LIMITS.unclamped_limit
MAX_CLAMPED_FRACTION = DEFAULT_LIMITS.max_clamped_fraction
LABEL_MEAN_MARGIN = DEFAULT_LIMITS.label_mean_margin


COLUMNS = (
    "synthetic_id",
    "shape_matches_mask",
    "nonfinite_voxels",
    "image_min",
    "image_max",
    "image_std",
    "lineage_missing",
    "clamp_recorded",
)
UNCLAMPED_COLUMNS = ("unclamped_min", "unclamped_max", "clamped_fraction")
RECORDED = "clamp_recorded == True"


def _recorded(expectation: type, column: str, description: str, **kwargs) -> object:
    """An expectation on the rows whose values before the clip were recorded (`clamp_recorded` True)."""
    return expectation(
        column=column, row_condition=RECORDED, condition_parser="pandas", description=description, **kwargs
    )


def _unclamped_expectations(limits: SyntheticContractConfig) -> list:
    """Values before the clip: recorded, within the stated bound, and rarely outside [-1, 1]."""
    present = [
        _recorded(gxe.ExpectColumnValuesToNotBeNull, column, f"{column} must be recorded (clamp_recorded is True)")
        for column in UNCLAMPED_COLUMNS
    ]
    return [
        *present,
        _recorded(
            gxe.ExpectColumnValuesToBeBetween,
            "unclamped_min",
            f"unclamped_min must be >= {-limits.unclamped_limit:g} (values before the clip diverged)",
            min_value=-limits.unclamped_limit,
        ),
        _recorded(
            gxe.ExpectColumnValuesToBeBetween,
            "unclamped_max",
            f"unclamped_max must be <= {limits.unclamped_limit:g} (values before the clip diverged)",
            max_value=limits.unclamped_limit,
        ),
        _recorded(
            gxe.ExpectColumnValuesToBeBetween,
            "clamped_fraction",
            f"clamped_fraction must be <= {limits.max_clamped_fraction:g} (voxels outside [-1, 1] before the clip)",
            min_value=0,
            max_value=limits.max_clamped_fraction,
        ),
    ]


def _label_expectations(label_mean_ranges: Mapping[int, tuple[float, float]], margin: float) -> list:
    """Per label, the volume's mean intensity inside it within the real range widened by `margin`.

    A volume whose mask lacks the label has no value there (NaN) and is not checked on it.
    """
    expectations = []
    for value, (low, high) in sorted(label_mean_ranges.items()):
        column, lowest, highest = f"label_{value}_mean", low - margin, high + margin
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=column,
                min_value=lowest,
                max_value=highest,
                description=(
                    f"{column} must be within [{lowest:.3g}, {highest:.3g}] (real training cases "
                    f"{low:.3g}..{high:.3g}, widened by {margin:g})"
                ),
            )
        )
    return expectations


def synthetic_contract(
    df: pd.DataFrame,
    label_mean_ranges: Mapping[int, tuple[float, float]] | None = None,
    limits: SyntheticContractConfig = DEFAULT_LIMITS,
) -> ContractResult:
    """Validate per-volume statistics of generated images (one row per synthetic id, `synthetic_row`).

    `label_mean_ranges` ({label: (lowest, highest) per-case mean intensity inside it} over the real training
    cases, `gem3d.label_intensity.real_label_mean_ranges`) adds the label-wise intensity checks; None skips them.
    `limits` states the bounds.
    """
    ranges = dict(label_mean_ranges or {})
    absent = [f"label_{value}_mean" for value in ranges if f"label_{value}_mean" not in df.columns]
    table = df.assign(**dict.fromkeys(absent, np.nan))  # no volume has that label: nothing to compare
    expectations = [
        *required_columns(COLUMNS),
        gxe.ExpectTableColumnsToMatchSet(column_set=list(UNCLAMPED_COLUMNS), exact_match=False),
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
        gxe.ExpectColumnValuesToBeInSet(column="clamp_recorded", value_set=[True, False]),
        *_unclamped_expectations(limits),
        *_label_expectations(ranges, limits.label_mean_margin),
    ]
    return validate_table("synthetic", table, expectations, id_column="synthetic_id")
