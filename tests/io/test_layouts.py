"""Layout detection: MSD, nnU-Net v2 raw and image/label pairs; paths must stay inside the dataset."""

import json

import pytest

from gem3d.errors import DatasetLayoutError, MissingFileError, PathOutsideDatasetError
from gem3d.io.layouts import discover_dataset
from tests.builders import write_msd_dataset, write_nnunet_dataset, write_pairs_dataset


def test_msd_layout_lists_cases_labels_and_modality(tmp_path):
    info = discover_dataset(write_msd_dataset(tmp_path / "msd", cases=2))
    assert info.layout == "msd"
    assert info.modality == "MRI"
    assert info.labels == {0: "background", 1: "one", 2: "two"}
    assert [case.case_id for case in info.cases] == ["case_000", "case_001"]
    assert all(case.image_path.exists() and case.label_path.exists() for case in info.cases)


def test_nnunet_layout_reads_channel_names_and_named_labels(tmp_path):
    info = discover_dataset(write_nnunet_dataset(tmp_path / "nn", cases=2))
    assert info.layout == "nnunet"
    assert info.modality == "CT"
    assert info.labels == {0: "background", 1: "one", 2: "two"}
    assert [case.case_id for case in info.cases] == ["case_000", "case_001"]


def test_pairs_layout_matches_by_name(tmp_path):
    root = write_pairs_dataset(tmp_path / "pairs", cases=2)
    (root / "images" / "lonely.nii.gz").write_bytes((root / "images" / "case_000.nii.gz").read_bytes())
    info = discover_dataset(root)
    assert info.layout == "pairs"
    assert [case.case_id for case in info.cases] == ["case_000", "case_001"]
    assert len(info.problems) == 1 and isinstance(info.problems[0], MissingFileError)
    assert "lonely" in str(info.problems[0])


def test_msd_multichannel_selects_channel_by_name(tmp_path):
    root = write_msd_dataset(tmp_path / "msd", cases=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert discover_dataset(root, channel="t1gd").cases[0].channel == 2
    assert discover_dataset(root).cases[0].channel == 0
    with pytest.raises(DatasetLayoutError, match="ADC"):
        discover_dataset(root, channel="ADC")


def test_path_leaving_the_dataset_is_a_case_problem_not_a_crash(tmp_path):
    root = write_msd_dataset(tmp_path / "msd", cases=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["image"] = "../../etc/passwd"
    (root / "dataset.json").write_text(json.dumps(meta))
    info = discover_dataset(root)
    assert [case.case_id for case in info.cases] == ["case_001"]
    assert isinstance(info.problems[0], PathOutsideDatasetError)
    assert "outside the dataset folder" in str(info.problems[0])


def test_missing_label_file_is_reported_with_its_path(tmp_path):
    root = write_msd_dataset(tmp_path / "msd", cases=2)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    info = discover_dataset(root)
    assert [case.case_id for case in info.cases] == ["case_000"]
    assert "case_001.nii.gz" in str(info.problems[0])


def test_unknown_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no dataset.json"):
        discover_dataset(tmp_path / "empty")
