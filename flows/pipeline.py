"""The whole pipeline as one parent flow, each step a subflow with its own nested MLflow run.

phantoms (when no dataset is given) -> ingest + preprocess + contracts -> train (autoencoder when
configured, stage 1, stage 2, slice generator, baseline) -> enhance (every configured setting) ->
de-enhance -> evaluate + report. Every step skips work whose inputs and config are unchanged, so a second
run with nothing changed trains and samples nothing, and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from prefect import flow

from flows.deenhance import deenhance_flow
from flows.enhance import enhance_flow
from flows.evaluate import evaluate_flow
from flows.preprocess import preprocess_flow
from flows.train import train_flow
from gem3d.config import config_hash, load_config
from gem3d.io.phantoms import write_phantom_dataset
from gem3d.splits import store_cases_of_split
from tasks.locking import work_folder_lock
from tasks.runners import make_task_runner
from tasks.tracking import tracked_run, tracking_uri

DEFAULT_PHANTOM_CASES = 8
progress = logging.getLogger("gem3d.pipeline")


@flow(name="gem3d-pipeline")
def pipeline_flow(
    dataset: str | None = None,
    config_path: str | None = None,
    workdir: str = "gem3d-work",
    dask_address: str | None = None,
    workers: int = 2,
    phantom_cases: int = DEFAULT_PHANTOM_CASES,
) -> dict:
    """Run every step on `dataset` (built-in brain phantoms when None) under `workdir`.

    Fan-out steps (preprocessing, sampling) run on Dask: a local cluster of `workers`, or `dask_address`.
    The work folder's lock is held throughout: a second run on the same folder stops at once (`tasks.locking`).
    """
    with work_folder_lock(workdir, "gem3d-pipeline"):
        return _pipeline_steps(dataset, config_path, workdir, dask_address, workers, phantom_cases)


def _pipeline_steps(
    dataset: str | None,
    config_path: str | None,
    workdir: str,
    dask_address: str | None,
    workers: int,
    phantom_cases: int,
) -> dict:
    """The steps of `pipeline_flow`, in order, while it holds the work folder."""
    config = load_config(config_path)
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    fan_out = make_task_runner(dask_address, workers)
    if dataset is None:
        phantom_dir = root / "phantoms"
        if not (phantom_dir / "dataset.json").exists():
            progress.info("writing %d brain phantom cases to %s", phantom_cases, phantom_dir)
            write_phantom_dataset(phantom_dir, "brain", phantom_cases, config.seed)
        dataset = str(phantom_dir)
    store = str(root / "store.zarr")
    synthetic = str(root / "synthetic.zarr")
    summary: dict = {"workdir": str(root), "dataset": dataset, "config_hash": config_hash(config)}
    with tracked_run("pipeline", root, config, tags={"gem3d.dataset": dataset}) as run_id:
        progress.info("1/5 preprocessing %s", dataset)
        prepared = preprocess_flow.with_options(task_runner=fan_out)(dataset, store, config_path, None, str(root))
        summary |= {"store": store, "cases": prepared["published"], "quarantined": prepared["quarantined"]}

        progress.info("2/5 training")
        trained = train_flow(store, config_path, "all", False, str(root))
        summary["training"] = {
            stage: "reused (inputs unchanged)" if result["skipped"] else f"trained, loss {result['final_loss']:.4f}"
            for stage, result in trained.items()
        }

        progress.info("3/5 enhancement: %s", ", ".join(config.sampling.settings))
        enhance = enhance_flow.with_options(task_runner=fan_out)
        sampled = {
            setting: enhance(store, synthetic, setting, config.sampling.variants_per_case, None, config_path, str(root))
            for setting in config.sampling.settings
        }
        summary["synthetic"] = synthetic
        summary["sampling"] = {
            setting: f"{len(result['written'])} new, {result['skipped']} unchanged, "
            f"{len(result['quarantined'])} quarantined"
            for setting, result in sampled.items()
        }

        progress.info("4/5 de-enhancement")
        reference = store_cases_of_split(Path(store), "train")[0]
        deenhanced = deenhance_flow.with_options(task_runner=fan_out)(
            store, str(root / "deenhanced.zarr"), [reference], None, config_path, str(root)
        )
        summary["deenhanced"] = str(root / "deenhanced.zarr")
        summary["deenhancement spread shrank for"] = ", ".join(deenhanced["spread"]["shrank"]) or "none"

        progress.info("5/5 evaluation")
        evaluated = evaluate_flow(store, synthetic, str(root / "report"), config_path, str(root))
        summary["report"] = evaluated["report"]
        summary["evaluation"] = "reused (inputs unchanged)" if evaluated["skipped"] else "computed"
        mlflow.log_metrics({name: value for name, value in evaluated["metrics"].items()})
    summary["mlflow run"] = run_id
    summary["mlflow ui"] = f"mlflow ui --backend-store-uri {tracking_uri(root)}"
    return summary


def run_pipeline(
    dataset: str | None, config_path: str | None, workdir: str, dask_address: str | None, workers: int
) -> dict:
    """Entry point for the CLI."""
    return pipeline_flow(dataset, config_path, workdir, dask_address, workers)
