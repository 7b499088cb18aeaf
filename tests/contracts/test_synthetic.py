"""The synthetic contract over per-volume statistics of generated images, keyed by synthetic_id: the clipped
image, the values before the clip, and the mean intensity inside each label against the real training cases."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_contracts import synthetic_contract
from data_contracts.synthetic import LABEL_MEAN_MARGIN, MAX_CLAMPED_FRACTION, UNCLAMPED_LIMIT
from gem3d.config import SyntheticContractConfig
from gem3d.label_intensity import case_label_means, label_means, real_label_mean_ranges
from gem3d.lineage import LineageRecord
from gem3d.splits import store_cases_of_split
from gem3d.store import read_case
from gem3d.synthesis import SynthesisPlan, SyntheticVolume
from gem3d.synthesis.plans import InformedChoice
from gem3d.synthetic_store import synthetic_row
from tests.synthesis import build_store

RANGES = {0: (-0.7, -0.6), 1: (0.2, 0.35), 2: (0.7, 0.85)}


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
            "clamp_recorded": [True] * count,
            "unclamped_min": [-1.05] * count,
            "unclamped_max": [1.1] * count,
            "clamped_fraction": [0.002] * count,
            "label_0_mean": [-0.65] * count,
            "label_1_mean": [0.3] * count,
            "label_2_mean": [0.8] * count,
        }
    )


def test_clean_batch_passes():
    result = synthetic_contract(_table(), label_mean_ranges=RANGES)
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
    (
        "clamped_fraction",
        0.4,
        f"clamped_fraction must be <= {MAX_CLAMPED_FRACTION:g} (voxels outside [-1, 1] before the clip); got 0.4",
    ),
    ("unclamped_max", 7.5, f"unclamped_max must be <= {UNCLAMPED_LIMIT:g} (values before the clip diverged); got 7.5"),
    (
        "unclamped_min",
        -3.5,
        f"unclamped_min must be >= {-UNCLAMPED_LIMIT:g} (values before the clip diverged); got -3.5",
    ),
    ("clamped_fraction", float("nan"), "clamped_fraction must be recorded (clamp_recorded is True)"),
    (
        "label_1_mean",
        0.95,
        f"label_1_mean must be within [-0.05, 0.6] (real training cases 0.2..0.35, widened by {LABEL_MEAN_MARGIN:g})"
        "; got 0.95",
    ),
]


def test_each_corrupted_volume_is_quarantined_by_synthetic_id():
    clean = 3
    table = _table(clean + len(CORRUPTIONS)).astype(object)
    for offset, (column, value, _) in enumerate(CORRUPTIONS):
        table.loc[clean + offset, column] = value
    result = synthetic_contract(table, label_mean_ranges=RANGES)
    assert not result.passed
    assert result.failed_case_ids == sorted(f"syn_{clean + offset:02d}" for offset in range(len(CORRUPTIONS)))
    for offset, (column, _, reason) in enumerate(CORRUPTIONS):
        failures = [failure for failure in result.failures if failure["case_id"] == f"syn_{clean + offset:02d}"]
        assert [(failure["column"], failure["reason"]) for failure in failures] == [(column, reason)]


def test_rows_without_a_record_of_the_values_before_the_clip_are_not_checked_on_them():
    table = _table(2)
    table.loc[1, ["clamp_recorded", "unclamped_min", "unclamped_max", "clamped_fraction"]] = [False] + [np.nan] * 3
    assert synthetic_contract(table, label_mean_ranges=RANGES).passed
    table.loc[1, "clamped_fraction"] = 0.5  # ignored too: not recorded by the sampler
    assert synthetic_contract(table).passed


def test_a_label_no_volume_has_is_not_compared_and_no_ranges_skip_the_label_checks():
    table = _table(2).drop(columns="label_2_mean")
    assert synthetic_contract(table, label_mean_ranges=RANGES).passed
    table.loc[0, "label_1_mean"] = 0.95
    assert synthetic_contract(table).passed
    assert synthetic_contract(table, label_mean_ranges=RANGES).failed_case_ids == ["syn_00"]


def test_a_caller_may_state_other_limits():
    table = _table(2)
    table.loc[0, ["clamped_fraction", "unclamped_max", "label_1_mean"]] = [0.4, 7.5, 0.95]
    assert synthetic_contract(table, label_mean_ranges=RANGES).failed_case_ids == ["syn_00"]
    loose = SyntheticContractConfig(unclamped_limit=10, max_clamped_fraction=0.5, label_mean_margin=1)
    assert synthetic_contract(table, label_mean_ranges=RANGES, limits=loose).passed


def test_duplicated_synthetic_id_is_quarantined():
    table = _table(3)
    table.loc[2, "synthetic_id"] = "syn_00"
    result = synthetic_contract(table)
    assert result.failed_case_ids == ["syn_00"]
    assert {failure["column"] for failure in result.failures} == {"synthetic_id"}


def test_table_without_synthetic_id_is_rejected():
    with pytest.raises(ValueError, match="synthetic_id"):
        synthetic_contract(_table(3).drop(columns="synthetic_id"))


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("synthetic_contract"))


def _volume(name: str, case_id: str, decoded: np.ndarray, mask: np.ndarray) -> SyntheticVolume:
    """A volume as `synthesize` returns it: clipped, with the range and clipped fraction of `decoded`."""
    plan = SynthesisPlan.create(
        source_case_id=case_id,
        source_mask_sha256=name,
        setting="ic",
        variant=0,
        seed=0,
        start_slice=0,
        informed=InformedChoice(mode="chosen", case_id=case_id, slice_index=0),
        checkpoint_sha256="weights",
        config_hash="config",
    )
    return SyntheticVolume(
        plan,
        np.clip(decoded, -1, 1).astype(np.float32),
        mask,
        LineageRecord(synthetic_id=plan.synthetic_id),
        unclamped_range=(float(decoded.min()), float(decoded.max())),
        clamped_fraction=float((np.abs(decoded) > 1).mean()),
    )


def test_real_volumes_pass_and_blown_up_or_mislabelled_ones_fail_against_the_real_training_cases(real_store):
    ranges = real_label_mean_ranges(real_store)
    train = store_cases_of_split(real_store, "train")
    assert set(ranges) == {0, 1, 2}
    for case_id in train:
        for value, mean in case_label_means(real_store, case_id).items():
            assert ranges[value][0] <= mean <= ranges[value][1]
    [test_case] = store_cases_of_split(real_store, "test")
    image, mask = read_case(real_store, test_case)
    rng = np.random.default_rng(0)
    blown = image + np.where(rng.random(image.shape) < 0.4, 3.0, 0.0)  # 40% of the voxels blew up
    mislabelled = image.copy()
    mislabelled[mask == 2] = ranges[2][0] - 4 * LABEL_MEAN_MARGIN  # lesion far darker than any real one
    volumes = {
        "good": _volume("good", test_case, image, mask),
        "blown": _volume("blown", test_case, blown, mask),
        "mislabelled": _volume("mislabelled", test_case, mislabelled, mask),
        "hand-built": SyntheticVolume(
            _volume("hand", test_case, image, mask).plan, image, mask, LineageRecord(synthetic_id="syn-hand")
        ),
    }
    rows = pd.DataFrame([synthetic_row(volume) for volume in volumes.values()])
    assert rows.loc[1, "clamped_fraction"] == pytest.approx(0.4, abs=0.02)
    assert not rows.loc[3, "clamp_recorded"] and np.isnan(rows.loc[3, "clamped_fraction"])
    assert rows.loc[0, "label_2_mean"] == pytest.approx(label_means(image, mask)[2])
    result = synthetic_contract(rows, label_mean_ranges=ranges)
    checked = {"unclamped_min", "unclamped_max", "clamped_fraction", "label_0_mean", "label_1_mean", "label_2_mean"}
    columns = {
        name: {f["column"] for f in result.failures if f["case_id"] == volume.plan.synthetic_id} & checked
        for name, volume in volumes.items()
    }
    assert columns["good"] == columns["hand-built"] == set()
    assert columns["mislabelled"] == {"label_2_mean"}
    assert {"unclamped_max", "clamped_fraction"} <= columns["blown"]
