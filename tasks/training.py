"""Prefect task for one training stage: skip when inputs are unchanged, track in MLflow, register the model."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gem3d.checkpoints import MODEL_FILE, SPEC_FILE, first_stage_sha256, read_bundle_meta
from gem3d.config import Config, section_hash
from gem3d.lineage import derive_id
from gem3d.store import manifest_digest, read_manifest, write_json_atomic
from gem3d.training import train_stage
from tasks.progress import ProgressReporter
from tasks.tracking import tracked_run

TRAINING_SECTIONS = ("data", "autoencoder", "denoiser", "diffusion", "train")
METRIC_POINTS = 200
REGISTERED_NAMES = {
    "autoencoder": "gem3d-autoencoder",
    "stage1": "gem3d-stage1",
    "stage2": "gem3d-stage2",
    "slicegen": "gem3d-slicegen",
    "baseline": "gem3d-baseline",
}


def training_key(config: Config, store: Path, stage: str, init_from: Path | None, models_dir: Path) -> str:
    """What a stage's result depends on: its config sections, the store's manifest, its starting weights, and
    (for every stage but the autoencoder itself) the first stage's weights, which define the latent space."""
    parent = read_bundle_meta(init_from)["sha256"] if init_from else None
    first_stage = None if stage == "autoencoder" else first_stage_sha256(config, models_dir)
    return derive_id(
        "train",
        stage=stage,
        config=section_hash(config, *TRAINING_SECTIONS),
        manifest=manifest_digest(store),
        init_from=parent,
        first_stage=first_stage,
    )


def _previous_result(bundle: Path, key: str) -> dict | None:
    """The recorded summary of an earlier training with the same inputs, if its bundle is intact."""
    if not (bundle / SPEC_FILE).exists():
        return None
    summary = read_bundle_meta(bundle).get("training")
    return summary if summary and summary.get("training_key") == key else None


def _step_reporter(total_steps: int, progress: ProgressReporter):
    """Per step: progress (step, loss) to whoever watches, and metrics to MLflow about METRIC_POINTS times per
    stage (every step for short runs), final values always."""
    every = max(1, total_steps // METRIC_POINTS)

    def report(step: int, metrics: dict) -> None:
        if "loss" in metrics:
            progress.update(step, loss=float(metrics["loss"]))
        if step % every == 0 or step >= total_steps or "loss" not in metrics:
            mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=step)

    return report


def _stage_steps(config: Config, stage: str) -> int:
    steps = getattr(config.train, stage).steps
    return steps + config.train.stage2.steps if stage == "baseline" else steps


def registered_name(stage: str, variant: str = "") -> str:
    """The registered model of a stage; a variant (e.g. the outline ablation) is a model of its own."""
    return f"{REGISTERED_NAMES[stage]}-{variant}" if variant else REGISTERED_NAMES[stage]


def _register(name: str, run_id: str) -> str:
    """Register the logged bundle as a new version of the model `name`; returns the version number."""
    client = mlflow.MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=mlflow.get_artifact_uri("model"), run_id=run_id)
    return str(version.version)


@task(name="train-stage", task_run_name="train-{stage}", cache_policy=NO_CACHE)
def train_stage_task(
    stage: str,
    config: Config,
    store: Path,
    models_dir: Path,
    workdir: Path,
    resume: bool = False,
    init_from: Path | None = None,
    variant: str = "",
) -> dict:
    """Train one stage (or reuse an identical earlier result) as a nested MLflow run; returns its summary.

    `variant` names a second model of the same stage (the outline ablation): its own run name and registered model.
    """
    logger = get_run_logger()
    run_name = f"train-{stage}-{variant}" if variant else f"train-{stage}"
    bundle = models_dir / stage
    key = training_key(config, store, stage, init_from, models_dir)
    previous = None if resume else _previous_result(bundle, key)
    if previous is not None:
        logger.info("%s: inputs unchanged (%s), reusing %s", stage, key, bundle)
        return previous | {"skipped": True}
    with tracked_run(run_name, workdir, config, tags={"gem3d.stage": stage, "gem3d.variant": variant}) as run_id:
        manifest = read_manifest(store)
        dataset = mlflow.data.from_pandas(
            manifest, source=str(store), name="store-manifest", digest=manifest_digest(store)[:16]
        )
        mlflow.log_input(dataset, context="training")
        total_steps = _stage_steps(config, stage)
        with ProgressReporter(f"training {stage}", total_steps) as progress:
            result = train_stage(
                stage,
                config,
                store,
                models_dir,
                resume=resume,
                init_from=init_from,
                on_metrics=_step_reporter(total_steps, progress),
            )
        mlflow.log_metrics(
            {
                "final_loss": result.final_loss,
                "slices_per_second": result.slices_per_second,
                "peak_memory_mb": result.peak_memory_mb,
                **{f"validation_{name}": float(value) for name, value in result.validation.items()},
            }
        )
        if result.sample_grid is not None:
            mlflow.log_artifact(str(result.sample_grid), artifact_path="samples")
        for name in (MODEL_FILE, SPEC_FILE):
            mlflow.log_artifact(str(result.bundle_dir / name), artifact_path="model")
        version = _register(registered_name(stage, variant), run_id)
    summary = {
        "stage": stage,
        "bundle": str(result.bundle_dir),
        "sha256": result.sha256,
        "training_key": key,
        "mlflow_run_id": run_id,
        "model_name": registered_name(stage, variant),
        "model_version": version,
        "steps": result.steps,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "slices_per_second": result.slices_per_second,
        "skipped": False,
    }
    meta = read_bundle_meta(bundle)
    write_json_atomic(
        bundle / SPEC_FILE, meta | {"mlflow_run_id": run_id, "model_version": version, "training": summary}
    )
    logger.info("%s: loss %.4f -> %.4f in %d steps", stage, result.first_loss, result.final_loss, result.steps)
    return summary
