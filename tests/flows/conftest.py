"""One micro pipeline run per test session, shared by the flow tests that need trained models and samples."""

from pathlib import Path

import pytest

MICRO_CONFIG = str(Path(__file__).resolve().parents[1] / "data" / "micro.yaml")


@pytest.fixture(scope="session")
def micro_run(prefect_harness, tmp_path_factory):
    """The whole pipeline on 6 brain phantoms with the micro config: (workdir, summary)."""
    from flows.pipeline import pipeline_flow

    workdir = tmp_path_factory.mktemp("micro") / "work"
    summary = pipeline_flow(None, MICRO_CONFIG, str(workdir), None, 2, 6)
    return workdir, summary
