"""Training flow: check the store is training-ready, then train the stages in order.

Order: autoencoder (when the config trains one) -> stage 1 -> stage 2 (from stage 1) -> slice generator
-> baseline. Each stage is a nested MLflow run and a registered model version; unchanged stages are reused.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from data_contracts import training_ready_contract
from gem3d.anatomy import ABLATION_MODELS, without_outline
from gem3d.config import Config, load_config
from gem3d.errors import StoreError
from gem3d.store import read_manifest
from tasks.training import train_stage_task

ALL_STAGES = ("autoencoder", "stage1", "stage2", "slicegen", "baseline")


class NotTrainingReadyError(StoreError):
    kind = "not-training-ready"


def stages_to_run(stage: str, config: Config) -> list[str]:
    """The stages named by `stage` ("all" or one name), dropping the autoencoder when none is trained."""
    if stage != "all" and stage not in ALL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(ALL_STAGES)} or 'all'")
    chosen = list(ALL_STAGES) if stage == "all" else [stage]
    if config.autoencoder.kind != "train":
        chosen = [name for name in chosen if name != "autoencoder"]
    return chosen


def check_training_ready(store: Path, config: Config) -> None:
    """Run the training-ready contract; stop with every failure spelled out when it does not pass."""
    result = training_ready_contract(read_manifest(store), config.data.window_length, config.data.in_plane_size)
    result.save(store / "validation" / "training_ready.json")
    if not result.passed:
        reasons = "; ".join(f"{f.get('case_id') or 'store'}: {f['reason']}" for f in result.failures)
        raise NotTrainingReadyError(store, f"store is not ready for training: {reasons}")


@flow(name="train")
def train_flow(
    store: str,
    config_path: str | None = None,
    stage: str = "all",
    resume: bool = False,
    workdir: str | None = None,
) -> dict:
    """Train `stage` ("all", or one of autoencoder, stage1, stage2, slicegen, baseline) on `store`."""
    config = load_config(config_path)
    store_path = Path(store).resolve()
    workdir_path = Path(workdir).resolve() if workdir else store_path.parent
    models_dir = workdir_path / "models"
    check_training_ready(store_path, config)
    results: dict[str, dict] = {}
    for name in stages_to_run(stage, config):
        init_from = models_dir / "stage1" if name == "stage2" else None
        results[name] = train_stage_task(name, config, store_path, models_dir, workdir_path, resume, init_from)
    if config.evaluation.outline_ablation and config.denoiser.anatomy_outline:
        results |= _train_outline_ablation(stage, config, store_path, models_dir, workdir_path, resume)
    return results


def _train_outline_ablation(
    stage: str, config: Config, store: Path, models_dir: Path, workdir: Path, resume: bool
) -> dict[str, dict]:
    """Stages 1 and 2 once more without the anatomy outline, into `models/no-outline`, for the evaluation."""
    if config.autoencoder.kind == "train":
        raise ValueError(
            "evaluation.outline_ablation needs a pixel-space or pretrained first stage (autoencoder.kind none or "
            "pretrained): the ablation's bundles would not find the trained autoencoder"
        )
    ablation_dir = models_dir / ABLATION_MODELS
    results = {}
    for name in (name for name in ("stage1", "stage2") if stage in ("all", name)):
        init_from = ablation_dir / "stage1" if name == "stage2" else None
        results[f"{name}-{ABLATION_MODELS}"] = train_stage_task(
            name, without_outline(config), store, ablation_dir, workdir, resume, init_from, variant=ABLATION_MODELS
        )
    return results
