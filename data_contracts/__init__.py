"""Data contracts: Great Expectations suites over per-case tables, each returning pass/fail and a
quarantine list. GX analytics are switched off here, before any submodule imports GX."""

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from data_contracts.preprocessed import preprocessed_contract  # noqa: E402
from data_contracts.raw import raw_contract  # noqa: E402
from data_contracts.runner import ContractResult, quarantine_list, validate_table  # noqa: E402
from data_contracts.synthetic import synthetic_contract  # noqa: E402
from data_contracts.training_ready import training_ready_contract  # noqa: E402

__all__ = [
    "ContractResult",
    "preprocessed_contract",
    "quarantine_list",
    "raw_contract",
    "synthetic_contract",
    "training_ready_contract",
    "validate_table",
]
