"""The runner: failed rows map to case ids, table-level failures to none, results save as JSON, runs repeat
in one process and print nothing."""

import json

import pandas as pd
import pytest
from great_expectations import expectations as gxe

from data_contracts import runner
from data_contracts.runner import ContractResult, quarantine_list, required_columns, validate_table


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {"case_id": ["c0", "c1", "c2", "c3"], "value": [0.5, 2.0, -3.0, 0.1], "group": ["a", "a", "b", "a"]}
    )


def _expectations() -> list:
    return [
        *required_columns(["case_id", "value"]),
        gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0, max_value=1),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="group", min_value=1, max_value=1),
    ]


def test_failed_rows_map_to_case_ids_and_table_failures_to_none():
    result = validate_table("toy", _table(), _expectations())
    assert not result.passed
    assert result.failed_case_ids == ["c1", "c2"]
    assert quarantine_list(result) == ["c1", "c2"]
    by_case = {failure["case_id"]: failure for failure in result.failures}
    assert by_case["c1"]["column"] == "value"
    assert by_case["c1"]["expectation"] == "expect_column_values_to_be_between"
    assert by_case["c1"]["reason"] == "value must be >= 0 and <= 1; got 2.0"
    assert by_case[None]["column"] == "group"
    assert "found 2 distinct values" in by_case[None]["reason"]
    assert result.statistics["rows"] == 4
    assert result.statistics["evaluated_expectations"] == 6
    assert result.statistics["successful_expectations"] == 4


def test_clean_table_passes_with_no_failures():
    table = _table().assign(value=[0.0, 0.5, 1.0, 0.2], group="a")
    result = validate_table("toy", table, _expectations())
    assert result.passed
    assert result.failures == []
    assert result.failed_case_ids == []
    assert result.statistics["successful_expectations"] == result.statistics["evaluated_expectations"]


def test_missing_column_is_reported_once_as_missing():
    result = validate_table("toy", _table().drop(columns="value"), _expectations())
    assert not result.passed
    value_failures = [failure for failure in result.failures if failure["column"] == "value"]
    assert [failure["reason"] for failure in value_failures] == ["column 'value' is missing from the table"]


def test_empty_table_fails():
    result = validate_table("toy", _table().iloc[:0], _expectations())
    assert not result.passed
    assert any("at least 1 row" in failure["reason"] for failure in result.failures)


def test_table_without_id_column_is_rejected():
    with pytest.raises(ValueError, match="no id column 'case_id'"):
        validate_table("toy", _table().drop(columns="case_id"), _expectations())


def test_same_contract_twice_in_one_process_reuses_the_context():
    first = validate_table("toy", _table(), _expectations())
    context = runner._context()
    second = validate_table("toy", _table(), _expectations())
    assert runner._context() is context
    assert first.failures == second.failures
    assert first.failed_case_ids == second.failed_case_ids


def test_reused_expectation_objects_validate_again():
    expectations = _expectations()
    assert validate_table("toy", _table(), expectations).failed_case_ids == ["c1", "c2"]
    assert validate_table("toy", _table(), expectations).failed_case_ids == ["c1", "c2"]


def test_context_creation_and_validation_print_nothing(capfd, monkeypatch):
    monkeypatch.setattr(runner, "_CONTEXT", None)
    validate_table("toy", _table(), _expectations())
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_save_writes_json_atomically(tmp_path):
    result = validate_table("toy", _table(), _expectations())
    path = result.save(tmp_path / "results" / "toy.json")
    loaded = json.loads(path.read_text())
    assert loaded == result.to_json()
    assert loaded["failed_case_ids"] == ["c1", "c2"]
    assert ContractResult(**loaded) == result
    assert sorted(item.name for item in path.parent.iterdir()) == ["toy.json"]
