"""A real Prefect server and a real MLflow tracking server for the service tests, started together once per
session on free local ports (each with its own state under a temporary folder) and stopped at its end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import HOST, clean_environment, console_script, free_port, launch

STARTUP_TIMEOUT = 180.0


@dataclass(frozen=True)
class Servers:
    """Where the servers answer, the environment their clients start from, and the session's folder."""

    root: Path
    env: dict[str, str]
    prefect_api: str
    mlflow_uri: str
    mlflow_artifacts: Path

    @property
    def prefect_env(self) -> dict[str, str]:
        """The clean environment pointed at the Prefect server (for the prefect CLI and workers)."""
        return self.env | {"PREFECT_API_URL": self.prefect_api}


def _prefect_server() -> tuple[list[str], str]:
    """`prefect server start` on a free port (its database in the private PREFECT_HOME): command and API URL."""
    port = free_port()
    command = [console_script("prefect"), "server", "start", "--host", HOST, "--port", str(port), "--no-ui"]
    return command, f"http://{HOST}:{port}/api"


def _mlflow_server(root: Path) -> tuple[list[str], str, Path]:
    """`mlflow server` on a free port: sqlite backend, artifacts served through the server from a folder."""
    port = free_port()
    artifacts = root / "mlflow-artifacts"
    command = [
        console_script("mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--workers",
        "1",
    ]
    return command, f"http://{HOST}:{port}", artifacts


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[Servers]:
    """Both servers, launched side by side and waited for together; every process they started is stopped."""
    root = tmp_path_factory.mktemp("services")
    env = clean_environment(root)
    prefect_command, prefect_api = _prefect_server()
    mlflow_command, mlflow_uri, artifacts = _mlflow_server(root)
    # no GenAI job runners (a dozen huey processes) next to the tracking server: nothing here queues jobs
    mlflow_env = env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with ExitStack() as stack:
        prefect = launch("prefect-server", prefect_command, env, root, f"{prefect_api}/health")
        stack.callback(prefect.stop)
        mlflow = launch("mlflow-server", mlflow_command, mlflow_env, root, f"{mlflow_uri}/health")
        stack.callback(mlflow.stop)
        prefect.wait_ready(lambda answer: answer.status_code == 200 and answer.json() is True, STARTUP_TIMEOUT)
        mlflow.wait_ready(lambda answer: answer.status_code == 200, STARTUP_TIMEOUT)
        yield Servers(root, env, prefect_api, mlflow_uri, artifacts)
