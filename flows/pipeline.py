"""The whole pipeline as one parent flow: phantoms (if no dataset) -> preprocess + contracts -> ...

Each step is a subflow with its own MLflow run, nested under the pipeline's run.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow

from flows.preprocess import preprocess_flow
from gem3d.config import load_config
from gem3d.io.phantoms import write_phantom_dataset
from tasks.runners import make_task_runner
from tasks.tracking import tracked_run

DEFAULT_PHANTOM_CASES = 8


@flow(name="gem3d-pipeline")
def pipeline_flow(
    dataset: str | None = None,
    config_path: str | None = None,
    workdir: str = "gem3d-work",
    dask_address: str | None = None,
    workers: int = 2,
) -> dict:
    """Run every step on `dataset` (built-in brain phantoms when None) under `workdir`.

    Fan-out steps run on Dask: a local cluster of `workers` processes, or the cluster at `dask_address`.
    """
    config = load_config(config_path)
    fan_out = make_task_runner(dask_address, workers)
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        phantom_dir = root / "phantoms"
        if not (phantom_dir / "dataset.json").exists():
            write_phantom_dataset(phantom_dir, "brain", DEFAULT_PHANTOM_CASES, config.seed)
        dataset = str(phantom_dir)
    store = root / "store.zarr"
    with tracked_run("pipeline", root, config):
        summary = preprocess_flow.with_options(task_runner=fan_out)(dataset, str(store), config_path, None, str(root))
        mlflow.log_metric("cases_ok", summary["published"])
    return {
        "dataset": dataset,
        "store": str(store),
        "cases published": summary["published"],
        "quarantine": summary["quarantine"],
        "mlflow": f"mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}",
        "config_hash": summary["config_hash"],
    }


def run_pipeline(
    dataset: str | None, config_path: str | None, workdir: str, dask_address: str | None, workers: int
) -> dict:
    """Entry point for the CLI."""
    return pipeline_flow(dataset, config_path, workdir, dask_address, workers)
