"""The training flow's tracking: one MLflow run per stage with metrics, artifacts, dataset input and a
registered model version; a store that is not training-ready stops the flow with a clear message."""

import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from flows.train import NotTrainingReadyError, train_flow
from tests.flows.conftest import MICRO_CONFIG

STAGES = {
    "stage1": "gem3d-stage1",
    "stage2": "gem3d-stage2",
    "slicegen": "gem3d-slicegen",
    "baseline": "gem3d-baseline",
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_is_a_tracked_run_with_a_registered_model(micro_run, stage):
    workdir, _ = micro_run
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    [run] = client.search_runs(
        [mlflow.get_experiment_by_name("gem3d").experiment_id], f"tags.`gem3d.step` = 'train-{stage}'"
    )
    for metric in ("loss", "learning_rate", "slices_per_second", "peak_memory_mb", "final_loss"):
        assert metric in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "loss")) > 1
    assert run.data.params["data.window_length"] == "4"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/model.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/samples.png"]
    assert run.inputs.dataset_inputs[0].dataset.name == "store-manifest"
    [version] = client.search_model_versions(f"name = '{STAGES[stage]}'")
    assert version.run_id == run.info.run_id


def test_a_store_that_is_not_training_ready_stops_the_flow_with_a_clear_message(micro_run, tmp_path):
    workdir, _ = micro_run
    shutil.copytree(workdir / "store.zarr", tmp_path / "store.zarr")
    config = yaml.safe_load(Path(MICRO_CONFIG).read_text())
    config["data"]["window_length"] = 64
    path = tmp_path / "long-windows.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(NotTrainingReadyError, match="shape_z"):
        train_flow(str(tmp_path / "store.zarr"), str(path), "stage1", False, str(tmp_path))
    assert not (tmp_path / "models" / "stage1").exists()
