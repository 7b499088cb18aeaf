"""Runs a Great Expectations suite over a per-case table and turns the outcome into pass/fail plus a
quarantine list: every failed row is mapped back to its case id, with a reason a person can read.

One ephemeral GX context per process, created on first use, without progress bars; the package's
`__init__` turns GX analytics off before this module imports GX.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations import expectations as gxe
from great_expectations.data_context.types.base import ProgressBarsConfig

_LOCK = threading.Lock()
_CONTEXT: Any = None


@dataclass
class ContractResult:
    """Outcome of one contract over one table: pass/fail, readable failures and the case ids to quarantine."""

    contract: str
    passed: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    failed_case_ids: list[str] = field(default_factory=list)
    statistics: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict of the whole result."""
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON under a temporary sibling name, then rename it into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self.to_json(), stream, indent=2, allow_nan=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path


def required_columns(columns: Iterable[str]) -> list:
    """Expectations that the table has rows and holds every column, each with no null or NaN value."""
    columns = list(columns)
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=False),
        *(gxe.ExpectColumnValuesToNotBeNull(column=column) for column in columns),
    ]


def validate_table(
    contract_name: str, df: pd.DataFrame, expectations: list, id_column: str = "case_id"
) -> ContractResult:
    """Validate `df` against `expectations` (COMPLETE results) and map each failed row to its `id_column`."""
    if id_column not in df.columns:
        raise ValueError(f"contract {contract_name!r}: the table has no id column {id_column!r}")
    started = time.perf_counter()
    table = df.reset_index(drop=True)
    with _LOCK:
        outcome = _run_suite(_context(), contract_name, table, expectations, id_column)
    failures = _failures(outcome, id_column)
    failed_case_ids = sorted({failure["case_id"] for failure in failures if failure["case_id"] is not None})
    statistics = {key: int(value) for key, value in outcome.statistics.items() if key != "success_percent"}
    return ContractResult(
        contract=contract_name,
        passed=bool(outcome.success),
        failures=failures,
        failed_case_ids=failed_case_ids,
        statistics={"rows": len(table), **statistics},
        seconds=time.perf_counter() - started,
    )


def quarantine_list(result: ContractResult) -> list[str]:
    """Case ids to set aside; table-level failures name no case and fail the whole contract instead."""
    return list(result.failed_case_ids)


def _context() -> Any:
    """The process-wide ephemeral GX context, created on first use with progress bars off."""
    global _CONTEXT
    if _CONTEXT is None:
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        _CONTEXT = context
    return _CONTEXT


def _run_suite(context: Any, contract_name: str, table: pd.DataFrame, expectations: list, id_column: str) -> Any:
    """Register a uniquely named source, suite and validation definition, run them, then remove them."""
    name = f"{contract_name}-{uuid.uuid4().hex}"
    with ExitStack() as cleanup:
        source = context.data_sources.add_pandas(name)
        cleanup.callback(context.data_sources.delete, name)
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(
            gx.ExpectationSuite(name=name, expectations=[copy.copy(item) for item in expectations])
        )
        cleanup.callback(context.suites.delete, name)
        definition = gx.ValidationDefinition(name=name, data=batch, suite=suite)
        context.validation_definitions.add(definition)
        cleanup.callback(context.validation_definitions.delete, name)
        return definition.run(
            batch_parameters={"dataframe": table},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]},
        )


def _failures(outcome: Any, id_column: str) -> list[dict[str, Any]]:
    """One record per failed row (with its case id) or per failed table-level expectation (case id None)."""
    failed = [result for result in outcome.results if not result.success]
    missing_columns = {
        column
        for result in failed
        if result.expectation_config.type == "expect_table_columns_to_match_set"
        for column in _missing_columns(result.result)
    }
    failures = []
    for result in failed:
        config = result.expectation_config
        column = config.kwargs.get("column")
        errors = _exception_messages(result.exception_info)
        if errors and column in missing_columns:
            continue
        for case_id, failed_column, reason in _reasons(config, result.result, errors, id_column):
            failures.append(
                {
                    "case_id": None if case_id is None else str(case_id),
                    "expectation": config.type,
                    "column": failed_column,
                    "reason": reason,
                }
            )
    return failures


def _reasons(config: Any, result: dict, errors: list[str], id_column: str) -> list[tuple[Any, Any, str]]:
    """(case id, column, reason) for each way one expectation failed."""
    column = config.kwargs.get("column")
    clause = config.description or _describe(config.type, config.kwargs)
    if errors:
        return [(None, column, f"{clause}: could not be checked ({'; '.join(errors)})")]
    if config.type == "expect_table_columns_to_match_set":
        return [(None, name, f"column {name!r} is missing from the table") for name in _missing_columns(result)]
    rows = result.get("unexpected_index_list") or []
    if config.type == "expect_column_values_to_not_be_null":
        return [(_plain(row.get(id_column)), column, clause) for row in rows]
    if rows:
        return [(_plain(row.get(id_column)), column, f"{clause}; got {_plain(row.get(column))!r}") for row in rows]
    return [(None, column, _table_reason(config.type, config.kwargs, clause, result))]


def _missing_columns(result: dict) -> list[str]:
    """Required columns that a failed expect_table_columns_to_match_set found absent."""
    return list(result.get("details", {}).get("mismatched", {}).get("missing", []))


def _describe(expectation_type: str, kwargs: dict) -> str:
    """The rule an expectation states, in words: 'image_max must be <= 1'."""
    column = kwargs.get("column")
    if expectation_type == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if low is not None and low == high and not kwargs.get("strict_min") and not kwargs.get("strict_max"):
            return f"{column} must be {_bound(low)}"
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if kwargs.get('strict_min') else '>='} {_bound(low)}")
        if high is not None:
            bounds.append(f"{'<' if kwargs.get('strict_max') else '<='} {_bound(high)}")
        return f"{column} must be {' and '.join(bounds)}"
    if expectation_type == "expect_column_values_to_be_in_set":
        values = [_plain(value) for value in kwargs["value_set"]]
        return f"{column} must be {values[0]!r}" if len(values) == 1 else f"{column} must be one of {values}"
    if expectation_type == "expect_column_values_to_not_be_null":
        return f"{column} must not be missing (null or NaN)"
    if expectation_type == "expect_column_values_to_be_unique":
        return f"{column} must be unique"
    if expectation_type == "expect_column_values_to_match_regex":
        return f"{column} must match {kwargs['regex']!r}"
    if expectation_type == "expect_column_distinct_values_to_contain_set":
        return f"{column} must contain each of {[_plain(value) for value in kwargs['value_set']]}"
    if expectation_type == "expect_column_unique_value_count_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        count = f"exactly {low}" if low == high else f"between {low} and {high}"
        return f"{column} must have {count} distinct value(s)"
    if expectation_type == "expect_table_row_count_to_be_between":
        return f"the table must have at least {kwargs.get('min_value')} row(s)"
    return f"{expectation_type} on {column}"


def _table_reason(expectation_type: str, kwargs: dict, clause: str, result: dict) -> str:
    """Why a table-level expectation failed, naming what is absent or how many were found."""
    column = kwargs.get("column")
    if expectation_type == "expect_column_distinct_values_to_contain_set":
        absent = result.get("missing_list") or result.get("partial_missing_list") or []
        if absent:
            return "; ".join(f"{column} {_plain(value)!r} is empty (no row has it)" for value in absent)
    if expectation_type == "expect_column_unique_value_count_to_be_between":
        return f"{clause}; found {result.get('observed_value')} distinct values"
    if expectation_type == "expect_table_row_count_to_be_between":
        return f"{clause}; found {result.get('observed_value')}"
    if "observed_value" in result:
        return f"{clause}; observed {_plain(result['observed_value'])!r}"
    return clause


def _exception_messages(exception_info: Any) -> list[str]:
    """Messages of exceptions GX caught while checking one expectation (its info is flat or per metric)."""
    if not exception_info:
        return []
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = [str(info.get("exception_message")) for info in infos if info.get("raised_exception")]
    return sorted(set(messages))


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, and NaN as None, so reasons and JSON read cleanly."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _bound(value: Any) -> str:
    """A numeric bound as written in a rule: GX stores 1 as 1.0, the reason should say 1."""
    return f"{value:g}" if isinstance(value, float) else str(value)
