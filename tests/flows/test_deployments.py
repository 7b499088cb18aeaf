"""prefect.yaml: every deployment's entrypoint imports and its parameters validate against the flow."""

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_and_parameters_validate(deployment, monkeypatch):
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    parameters = deployment.get("parameters", {})
    assert set(parameters) <= set(inspect.signature(flow.fn).parameters)
    validated = flow.validate_parameters(parameters)
    assert set(validated) >= set(parameters)
    assert deployment["work_pool"]["name"] == "gem3d-process"


def test_every_flow_has_a_deployment_and_regeneration_runs_on_a_schedule():
    entrypoints = {d["entrypoint"].split(":")[0] for d in DEPLOYMENTS}
    flow_files = {f"flows/{p.name}" for p in (ROOT / "flows").glob("*.py")} - {
        "flows/__init__.py",
        "flows/cli.py",
    }
    assert flow_files <= entrypoints
    [regenerate] = [d for d in DEPLOYMENTS if d["name"] == "regenerate-synthetic-dataset"]
    assert regenerate["schedules"][0]["cron"] == "0 2 * * *"
    assert regenerate["entrypoint"] == "flows/pipeline.py:pipeline_flow"
