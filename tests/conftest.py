"""Test-session set-up: offline defaults, a private PREFECT_HOME, and one Prefect test harness per session."""

import os
import tempfile

import pytest

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="gem3d-prefect-home-")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from tasks.environment import apply_offline_defaults  # noqa: E402

apply_offline_defaults()


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for flow tests (started once: it costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
