"""The library's shape: data flows one way, and shared mechanisms (seeds, splits) exist once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "gem3d").rglob("*.py"))
PROJECT = sorted(
    path for folder in ("gem3d", "tasks", "flows", "data_contracts") for path in (ROOT / folder).rglob("*.py")
)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: str(path.relative_to(ROOT)))
def test_library_never_imports_orchestration_or_tracking(path: Path) -> None:
    forbidden = {"prefect", "mlflow", "great_expectations", "tasks", "flows", "data_contracts"}
    assert not {module.split(".")[0] for module in imported_modules(path)} & forbidden


def test_metrics_and_evaluation_do_not_depend_on_the_html_report() -> None:
    for path in [
        ROOT / "gem3d" / "metrics.py",
        *sorted((ROOT / "gem3d").glob("evaluation*/**/*.py")),
        *sorted((ROOT / "gem3d").glob("evaluation.py")),
    ]:
        assert "gem3d.report" not in imported_modules(path), path


def _functions_hashing_to_int(path: Path) -> list[str]:
    """Functions that turn a sha256 digest into an integer: seed derivations."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            source = ast.unparse(node)
            if "sha256(" in source and ".digest()" in source and "int.from_bytes" in source:
                found.append(f"{path.relative_to(ROOT)}:{node.name}")
    return found


def test_one_seed_derivation_for_the_whole_project() -> None:
    found = [name for path in PROJECT for name in _functions_hashing_to_int(path)]
    assert found == ["gem3d/seeds.py:derive_seed"]


def test_cases_of_a_split_are_selected_in_one_place() -> None:
    selecting = [
        str(path.relative_to(ROOT))
        for path in PROJECT
        if '["split"] ==' in path.read_text() or "['split'] ==" in path.read_text()
    ]
    assert selecting == []


SYNTHESIS = sorted([*(ROOT / "gem3d").glob("synthesis.py"), *(ROOT / "gem3d" / "synthesis").glob("*.py")])


@pytest.mark.parametrize("path", SYNTHESIS, ids=lambda path: str(path.relative_to(ROOT)))
def test_synthesis_modules_stay_small(path: Path) -> None:
    """Planning, model loading, preparation, encoding, lineage and the batch loop each have their own module."""
    assert len(path.read_text().splitlines()) <= 300
