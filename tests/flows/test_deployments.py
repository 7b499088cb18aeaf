"""prefect.yaml: every deployment's entrypoint imports and its parameters validate against the flow; and what a
deployment run leaves in lineage: each published volume names its root flow run and (when any) deployment."""

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from gem3d.splits import store_cases_of_split

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


def _lineage_flows():
    """A sampling flow that publishes through `run_synthesis`, and a parent flow that runs it as a subflow."""
    from prefect import flow, runtime

    from gem3d.config import SyntheticContractConfig
    from gem3d.synthesis import plan_enhancement
    from tasks.synthesis import run_synthesis, synthesis_context
    from tests.synthesis import CONFIG

    # untrained networks make noise: loosen the contract so the volumes are published rather than quarantined
    loose = SyntheticContractConfig(unclamped_limit=1000.0, max_clamped_fraction=1.0, label_mean_margin=100.0)
    config = CONFIG.model_copy(update={"synthetic_contract": loose})

    @flow(name="sample-for-lineage")
    def sampling_flow(store: str, workdir: str, out: str) -> str:
        context = synthesis_context(store, config, workdir)
        train = store_cases_of_split(context.store, "train")
        plans = plan_enhancement(
            context.store, train, "ic", 1, config, context.weights_sha256, context.config_hash, base_seed=config.seed
        )
        assert run_synthesis("enhance-ic", plans, context, out)["written"]
        return str(runtime.flow_run.id)

    @flow(name="parent-of-sampling")
    def parent_flow(store: str, workdir: str, out: str) -> tuple[str, str]:
        return str(runtime.flow_run.id), sampling_flow(store, workdir, out)

    return parent_flow


def test_published_volumes_name_the_root_flow_run_and_no_deployment_outside_one(prefect_harness, tmp_path):
    from gem3d.lineage import read_lineage_table
    from gem3d.synthetic_store import LINEAGE, list_synthetic
    from tests.synthesis import build_models, build_store

    store = build_store(tmp_path)
    build_models(tmp_path / "models")
    out = tmp_path / "synthetic.zarr"
    parent_id, sampling_id = _lineage_flows()(str(store), str(tmp_path), str(out))

    records = read_lineage_table(out / LINEAGE)
    assert records and {r.synthetic_id for r in records} == set(list_synthetic(out))
    assert parent_id != sampling_id
    for record in records:
        assert record.flow_run_id == sampling_id, "the flow run that sampled the volume"
        assert record.root_flow_run_id == parent_id, "the outermost flow run above it"
        assert record.deployment_id is None, "no deployment started these runs"
