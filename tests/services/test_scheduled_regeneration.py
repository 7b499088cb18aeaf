"""Scheduled regeneration as a team runs it, on real services: a Prefect server, the process work pool,
`regenerate-synthetic-dataset` deployed from prefect.yaml with its nightly cron, runs triggered from the CLI
and picked up by a process worker, tracked on an MLflow server that serves the artifacts.

One micro pipeline run (4 brain phantoms, tests/data/micro.yaml) serves the Prefect and the MLflow checks; a
second run with nothing changed must reuse everything. README, "Team set-up", lists the same commands.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from gem3d.lineage import read_lineage_table, sha256_file
from gem3d.store import read_manifest
from gem3d.synthetic_store import LINEAGE, list_synthetic, read_lineage_digest
from tests.flows.conftest import MICRO_CONFIG
from tests.services import REPOSITORY, console_script, run_command, tail

pytestmark = pytest.mark.slow

FLOW = "gem3d-pipeline"
DEPLOYMENT = "regenerate-synthetic-dataset"
POOL = "gem3d-process"
NIGHTLY = {"cron": "0 2 * * *", "timezone": "UTC"}
PHANTOM_CASES = 4
STAGES = ("stage1", "stage2", "slicegen", "baseline")
PUBLISHED = ("synthetic.zarr", "deenhanced.zarr")
RUN_TIMEOUT = 480.0
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class PrefectApi:
    """The Prefect server's REST API, read the way the UI and `prefect deployment inspect` read it."""

    url: str

    def get(self, path: str) -> Any:
        """GET `path` as JSON."""
        answer = httpx.get(f"{self.url}{path}", timeout=30.0)
        answer.raise_for_status()
        return answer.json()

    def send(self, method: str, path: str, body: dict) -> Any:
        """POST or PATCH `body` to `path`; the JSON answer (None when empty)."""
        answer = httpx.request(method, f"{self.url}{path}", json=body, timeout=30.0)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def flow_runs(self, **criteria: dict) -> list[dict]:
        """Flow runs matching a flow-run filter, e.g. deployment_id={"any_": [id]}."""
        return self.send("POST", "/flow_runs/filter", {"flow_runs": criteria})


@dataclass(frozen=True)
class Outputs:
    """What a pipeline run leaves in its work folder and model registry, to compare two runs by."""

    synthetic_ids: dict[str, tuple[str, ...]]
    lineage_digests: dict[str, str]
    bundles: dict[str, str]
    report: tuple[str, int]
    model_versions: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, workdir: Path, tracking: MlflowClient) -> Outputs:
        """Published ids and lineage table digests, model bundle hashes, the report's hash and modification
        time, and the registered versions of each stage's model."""
        report = workdir / "report" / "report.html"
        return cls(
            synthetic_ids={name: tuple(list_synthetic(workdir / name)) for name in PUBLISHED},
            lineage_digests={name: read_lineage_digest(workdir / name)["table_digest"] for name in PUBLISHED},
            bundles={stage: sha256_file(workdir / "models" / stage / "model.safetensors") for stage in STAGES},
            report=(sha256_file(report), report.stat().st_mtime_ns),
            model_versions={
                f"gem3d-{stage}": tuple(
                    sorted(version.version for version in tracking.search_model_versions(f"name='gem3d-{stage}'"))
                )
                for stage in STAGES
            },
        )


@dataclass(frozen=True)
class Regeneration:
    """Everything the checks read: the deployment as registered, its runs, outputs between and after them."""

    api: PrefectApi
    tracking: MlflowClient
    mlflow_uri: str
    mlflow_artifacts: Path
    workdir: Path
    deployment: dict
    scheduled: list[dict]
    first: dict
    second: dict
    after_first: Outputs
    after_second: Outputs
    prefect_file_unchanged: bool


def _wait_for_scheduled_runs(api: PrefectApi, deployment_id: str, timeout: float = 90.0) -> list[dict]:
    """The runs the server's scheduler creates from the deployment's schedule (it visits new deployments
    every few seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scheduled = api.flow_runs(deployment_id={"any_": [deployment_id]}, state={"type": {"any_": ["SCHEDULED"]}})
        if scheduled:
            return scheduled
        time.sleep(1.0)
    raise AssertionError(f"the scheduler created no run of the deployment within {timeout:.0f} s")


def _pause_schedules(api: PrefectApi, deployment: dict) -> None:
    """Pause the nightly schedule (the server drops its future runs), so the worker picks up only the runs the
    test triggers, whatever the time of day."""
    for schedule in deployment["schedules"]:
        api.send("PATCH", f"/deployments/{deployment['id']}/schedules/{schedule['id']}", {"active": False})
    assert not api.flow_runs(deployment_id={"any_": [deployment["id"]]}), "paused schedules leave no runs queued"


def _wait_for_final_state(api: PrefectApi, flow_run_id: str, timeout: float = 60.0) -> dict:
    """The flow run once it reached a final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow_run = api.get(f"/flow_runs/{flow_run_id}")
        if flow_run["state_type"] in TERMINAL:
            return flow_run
        time.sleep(1.0)
    raise AssertionError(f"flow run {flow_run_id} still {flow_run['state_type']} after {timeout:.0f} s")


def _trigger_and_work(api: PrefectApi, env: dict, worker_env: dict, cwd: Path, name: str) -> dict:
    """`prefect deployment run`, then one process worker (`--run-once`) to pick it up; the finished run."""
    prefect = console_script("prefect")
    triggered = run_command([prefect, "deployment", "run", f"{FLOW}/{DEPLOYMENT}"], env, cwd, cwd / f"{name}-run.log")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", triggered.stdout).group(1)
    worker_log = cwd / f"{name}-worker.log"
    run_command([prefect, "worker", "start", "--pool", POOL, "--run-once"], worker_env, cwd, worker_log, RUN_TIMEOUT)
    flow_run = _wait_for_final_state(api, flow_run_id)
    assert flow_run["state_type"] == "COMPLETED", f"{name} run ended {flow_run['state_name']}:\n{tail(worker_log)}"
    return flow_run


@pytest.fixture(scope="module")
def regeneration(servers) -> Regeneration:
    """Create the pool, deploy from prefect.yaml (micro parameters), check the schedule took, then run the
    deployment twice through a process worker with MLflow tracking on the server."""
    api, prefect = PrefectApi(servers.prefect_api), console_script("prefect")
    cwd, workdir = servers.root / "cwd", servers.root / "work"
    cwd.mkdir()
    env = servers.prefect_env
    run_command([prefect, "work-pool", "create", POOL, "--type", "process"], env, cwd, cwd / "work-pool.log")

    prefect_file = sha256_file(REPOSITORY / "prefect.yaml")
    parameters = {
        "dataset": None,
        "config_path": MICRO_CONFIG,
        "workdir": str(workdir),
        "workers": 1,
        "phantom_cases": PHANTOM_CASES,
    }
    deploy = [prefect, "--no-prompt", "deploy", "--name", DEPLOYMENT, "--params", json.dumps(parameters)]
    # from the repository root, as a team deploys: the entrypoint and the pull step's GEM3D_HOME point there
    run_command(deploy, env | {"GEM3D_HOME": str(REPOSITORY)}, REPOSITORY, cwd / "deploy.log", 300.0)
    deployment = api.get(f"/deployments/name/{FLOW}/{DEPLOYMENT}")
    scheduled = _wait_for_scheduled_runs(api, deployment["id"])
    _pause_schedules(api, deployment)

    tracking = MlflowClient(tracking_uri=servers.mlflow_uri, registry_uri=servers.mlflow_uri)
    worker_env = env | {"MLFLOW_TRACKING_URI": servers.mlflow_uri, "PREFECT_LOGGING_LEVEL": "INFO"}
    first = _trigger_and_work(api, env, worker_env, cwd, "first")
    after_first = Outputs.of(workdir, tracking)
    second = _trigger_and_work(api, env, worker_env, cwd, "second")
    return Regeneration(
        api=api,
        tracking=tracking,
        mlflow_uri=servers.mlflow_uri,
        mlflow_artifacts=servers.mlflow_artifacts,
        workdir=workdir,
        deployment=deployment,
        scheduled=scheduled,
        first=first,
        second=second,
        after_first=after_first,
        after_second=Outputs.of(workdir, tracking),
        prefect_file_unchanged=sha256_file(REPOSITORY / "prefect.yaml") == prefect_file,
    )


def _pipeline_runs(tracking: MlflowClient) -> list:
    """The pipeline's top-level MLflow runs, oldest first."""
    experiment = tracking.get_experiment_by_name("gem3d")
    runs = tracking.search_runs([experiment.experiment_id], "tags.`gem3d.step` = 'pipeline'", order_by=["start_time"])
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def _child_runs(tracking: MlflowClient, parent) -> dict[str, Any]:
    """A run's child runs by step name."""
    experiment_id = parent.info.experiment_id
    children = tracking.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {run.data.tags["gem3d.step"]: run for run in children}


def test_the_deployment_from_prefect_yaml_is_registered_with_its_nightly_schedule(regeneration):
    deployment = regeneration.deployment
    assert regeneration.prefect_file_unchanged, "prefect deploy must not rewrite prefect.yaml"
    assert deployment["entrypoint"] == "flows/pipeline.py:pipeline_flow"
    assert deployment["work_pool_name"] == POOL
    assert deployment["parameters"]["phantom_cases"] == PHANTOM_CASES, "the --params override took"
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPOSITORY)}}
    ], "GEM3D_HOME at deploy time names the checkout the worker runs the flow from"
    [schedule] = deployment["schedules"]
    assert schedule["active"] and {key: schedule["schedule"][key] for key in NIGHTLY} == NIGHTLY
    created = {run["created"][:10] for run in regeneration.scheduled}
    starts = [run["expected_start_time"] for run in regeneration.scheduled]
    assert all(start.endswith("T02:00:00Z") for start in starts), f"nightly at 02:00 UTC, got {starts}"
    assert all(start[:10] >= day for start in starts for day in created), "scheduled ahead, not backfilled"
    assert all(run["auto_scheduled"] for run in regeneration.scheduled)


def test_a_process_worker_runs_the_deployment_and_publishes_the_store_report_and_volumes(regeneration):
    first, workdir = regeneration.first, regeneration.workdir
    assert first["deployment_id"] == regeneration.deployment["id"] and first["work_pool_name"] == POOL
    manifest = read_manifest(workdir / "store.zarr")
    assert len(manifest) == PHANTOM_CASES
    for name in PUBLISHED:
        assert list_synthetic(workdir / name), f"no volume published in {name}"
    assert "<html" in (workdir / "report" / "report.html").read_text().lower()


def test_lineage_records_name_the_deployment_run_that_made_them(regeneration):
    api, first = regeneration.api, regeneration.first
    for name in PUBLISHED:
        records = read_lineage_table(regeneration.workdir / name / LINEAGE)
        assert {record.root_flow_run_id for record in records} == {first["id"]}, name
        assert {record.deployment_id for record in records} == {regeneration.deployment["id"]}, name
        for sampling_run_id in {record.flow_run_id for record in records}:
            assert sampling_run_id != first["id"], "the volume also names the subflow run that sampled it"
            sampling_run = api.get(f"/flow_runs/{sampling_run_id}")
            parent = api.get(f"/task_runs/{sampling_run['parent_task_run_id']}")
            assert parent["flow_run_id"] == first["id"], "that subflow ran inside the deployment's run"


def test_a_second_run_with_nothing_changed_reuses_everything(regeneration):
    api, second = regeneration.api, regeneration.second
    assert second["id"] != regeneration.first["id"] and second["deployment_id"] == regeneration.deployment["id"]
    assert regeneration.after_second == regeneration.after_first, "no new volume, model, version or report"

    subflows = api.flow_runs(parent_flow_run_id={"any_": [second["id"]]})
    logs = api.send("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"] for run in subflows]}}})
    messages = "\n".join(log["message"] for log in logs)
    for stage in STAGES:
        assert f"{stage}: inputs unchanged" in messages, f"{stage} was not reported reused"
    assert re.search(r"inputs unchanged \(eval-[0-9a-f]+\): report .* reused", messages), "evaluation not reused"

    [_, rerun] = _pipeline_runs(regeneration.tracking)
    steps = _child_runs(regeneration.tracking, rerun)
    assert not {step for step in steps if step.startswith("train-")}, "nothing is trained again"
    assert steps["preprocess"].data.metrics["cases_processed"] == 0
    assert steps["preprocess"].data.metrics["cases_skipped"] == PHANTOM_CASES
    for setting in ("enhance-ic", "enhance-igma"):
        metrics = steps[setting].data.metrics
        assert metrics["written"] == 0 and metrics["skipped"] == metrics["planned"] > 0, setting


def test_the_run_is_tracked_on_the_mlflow_server_with_its_artifacts_served_through_it(regeneration, tmp_path):
    tracking = regeneration.tracking
    experiment = tracking.get_experiment_by_name("gem3d")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), (
        f"artifacts must go through the server, not to {experiment.artifact_location}"
    )
    first, _ = _pipeline_runs(tracking)
    steps = _child_runs(tracking, first)
    expected = {"preprocess", *(f"train-{stage}" for stage in STAGES), "enhance-ic", "enhance-igma", "evaluate"}
    assert expected <= set(steps), f"child runs of the pipeline run: {sorted(steps)}"
    assert first.data.metrics, "the evaluation's metrics on the pipeline run"
    assert len(tracking.get_metric_history(steps["train-stage1"].info.run_id, "loss")) > 1
    for stage in STAGES:
        # the server is shared with other service tests, which register their own versions
        versions = tracking.search_model_versions(f"name='gem3d-{stage}'")
        assert steps[f"train-{stage}"].info.run_id in {version.run_id for version in versions}, (
            f"gem3d-{stage} has a version from this pipeline's training run"
        )

    evaluate = steps["evaluate"].info.run_id
    assert "report/report.html" in [item.path for item in tracking.list_artifacts(evaluate, "report")]
    downloaded = download_artifacts(
        run_id=evaluate,
        artifact_path="report/report.html",
        dst_path=str(tmp_path),
        tracking_uri=regeneration.mlflow_uri,
    )
    local_report = regeneration.workdir / "report" / "report.html"
    assert Path(downloaded).read_bytes() == local_report.read_bytes()
    stored = list(regeneration.mlflow_artifacts.rglob("report.html"))
    assert stored and stored[0].read_bytes() == local_report.read_bytes(), "kept in the server's artifact store"
