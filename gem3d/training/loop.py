"""One training loop for every GEM-3D stage: the first-stage autoencoder, slice diffusion (stage 1), volumetric
tuning (stage 2), the position-conditioned slice model, and the baseline without informed slice.

Stages differ by their phases (`STAGES`): which network, which data, which timesteps, which parameters train.
The data of step k, its noise and its timesteps are functions of (seed, phase, k, rank), never of an
iterator's position, so a run resumed from a checkpoint continues exactly the run that wrote it. The same
code runs on one process or under `torchrun` (DistributedDataParallel; only rank 0 writes files).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from gem3d.checkpoints import ModelSpec, build_model, load_model, read_bundle_meta, save_model
from gem3d.config import Config, StageTrainConfig, config_hash
from gem3d.determinism import deterministic_kernels
from gem3d.errors import StoreError
from gem3d.models.autoencoder import LatentCodec, PixelCodec
from gem3d.models.factory import build_codec
from gem3d.seeds import derive_seed
from gem3d.splits import store_cases_of_split
from gem3d.store import store_attributes
from gem3d.training.engine import PhaseRun, Runtime, StepBatchSampler, peak_memory_mb, start_runtime
from gem3d.training.evaluation import evaluate
from gem3d.training.latent_scale import estimate_latent_scale
from gem3d.training.phases import STAGES, LossContext, Phase, TrainingStage, make_dataset, slices_per_sample
from gem3d.training.state import CHECKPOINTS, CheckpointDir, restore_rng_state, rng_state, weights_digest


@dataclass
class TrainResult:
    """What a stage produced: the EMA bundle and its sha256, the loss curve, throughput, validation, artefacts.

    `checkpoint` (and its sha256) is the last training-state checkpoint (None on ranks other than 0);
    `weights_digest` hashes the delivered EMA tensors and is the same on every rank of a DDP run.
    """

    bundle_dir: Path
    sha256: str
    steps: int
    losses: list[float]
    final_loss: float
    first_loss: float
    slices_per_second: float
    peak_memory_mb: float
    validation: dict[str, float]
    checkpoint: Path | None
    checkpoint_sha256: str | None
    sample_grid: Path | None
    weights_digest: str


def train_stage(
    stage: TrainingStage,
    config: Config,
    store: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    init_from: Path | None = None,
    on_metrics: Callable[[int, dict], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train one stage on the store's training split and write its EMA bundle to `out_dir/<stage>/`.

    TrainingStage 2 starts from the stage-1 bundle `init_from`; latent stages read the autoencoder bundle from
    `out_dir/autoencoder` (kind "train"). `resume` continues from the latest checkpoint in
    `out_dir/<stage>/checkpoints` (a fresh run when there is none; without `resume` old ones are removed).
    `on_metrics(step, metrics)` and `on_checkpoint(path)` are called on rank 0 only.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    if stage == "autoencoder" and config.autoencoder.kind != "train":
        raise ValueError(f"autoencoder.kind is {config.autoencoder.kind!r}: there is no autoencoder to train")
    runtime = start_runtime(config)
    try:
        with deterministic_kernels(config.runtime.deterministic):
            return _train(
                stage, config, Path(store), Path(out_dir), resume, init_from, on_metrics, on_checkpoint, runtime
            )
    finally:
        if runtime.owns_process_group:
            dist.destroy_process_group()


def _train(
    stage: str,
    config: Config,
    store: Path,
    out_dir: Path,
    resume: bool,
    init_from: Path | None,
    on_metrics: Callable[[int, dict], None] | None,
    on_checkpoint: Callable[[Path], None] | None,
    runtime: Runtime,
) -> TrainResult:
    stage_dir = out_dir / stage
    num_classes = len(store_attributes(store)["labels"]) - 1
    train_cases = store_cases_of_split(store, "train")
    if not train_cases:
        raise StoreError(store, "the manifest has no training cases")
    codec = _first_stage(stage, config, out_dir, runtime.device)
    checkpoints = CheckpointDir(stage_dir / CHECKPOINTS)
    saved = checkpoints.latest() if resume else None
    runtime.barrier()
    if saved is None and runtime.is_main:
        checkpoints.clear()
    checkpoint, checkpoint_sha256, state = saved if saved is not None else (None, None, None)
    losses: list[float] = list(state["losses"]) if state is not None else []
    if state is not None:
        restore_rng_state(state["rng"])
    network, context, offset, slices, seconds = None, None, 0, 0, 0.0
    for index, phase in enumerate(STAGES[stage]):
        settings: StageTrainConfig = getattr(config.train, phase.settings)
        if state is not None and state["phase"] > index:
            offset += settings.steps
            continue
        torch.manual_seed(derive_seed(config.seed, stage, index, "init"))
        context = LossContext(config, phase, num_classes, codec, runtime.device)
        run = PhaseRun(_initial_network(stage, phase, config, num_classes, network, init_from), context, runtime)
        if state is not None and state["phase"] == index:
            run.load_state_dict(state)
        samples = settings.steps * runtime.world_size * settings.batch_windows
        loader = DataLoader(
            make_dataset(phase, store, train_cases, config, derive_seed(config.seed, stage, index, "data"), samples),
            batch_sampler=StepBatchSampler(
                run.step, settings.steps, settings.batch_windows, runtime.rank, runtime.world_size
            ),
            num_workers=config.train.num_workers,
            pin_memory=runtime.device.type == "cuda",
        )
        started = time.perf_counter()
        for batch in loader:
            torch.manual_seed(derive_seed(config.seed, stage, index, run.step, runtime.rank))
            metrics = run.train_step(batch)
            losses.append(metrics["loss"])
            step = offset + run.step
            if runtime.is_main and on_metrics is not None:
                on_metrics(step, metrics)
            every = settings.checkpoint_every
            if runtime.is_main and ((every > 0 and run.step % every == 0) or run.step == settings.steps):
                payload = {
                    "stage": stage,
                    "phase": index,
                    "step": step,
                    "world_size": runtime.world_size,
                    "config_hash": config_hash(config),
                    "losses": list(losses),
                    "rng": rng_state(),
                    **run.state_dict(),
                }
                checkpoint, checkpoint_sha256 = checkpoints.save(payload, step)
                if on_checkpoint is not None:
                    on_checkpoint(checkpoint)
        seconds += time.perf_counter() - started
        slices += len(loader) * settings.batch_windows * runtime.world_size * slices_per_sample(phase, config)
        network = run.ema.module
        offset += settings.steps
    final_phase = STAGES[stage][-1]
    if stage == "autoencoder" and config.autoencoder.scale_factor is None:
        seed = derive_seed(config.seed, stage, "latent_scale")
        network.set_scale_factor(estimate_latent_scale(network, store, train_cases, seed, runtime.device))
    validation, sample_grid = {}, None
    if runtime.is_main:
        validation, sample_grid = evaluate(context, network, store, train_cases, stage_dir, runtime)
        if on_metrics is not None:
            on_metrics(offset, validation)
        extra = {
            "stage": stage,
            "steps": offset,
            "final_loss": losses[-1] if losses else None,
            "latent_scale_factor": _latent_scale(network if stage == "autoencoder" else codec),
        }
        save_model(network, _spec(stage, final_phase, num_classes, final_phase.volumetric), config, stage_dir, extra)
    runtime.barrier()
    return TrainResult(
        bundle_dir=stage_dir,
        sha256=read_bundle_meta(stage_dir)["sha256"],
        steps=offset,
        losses=losses,
        final_loss=losses[-1] if losses else float("nan"),
        first_loss=losses[0] if losses else float("nan"),
        slices_per_second=slices / seconds if seconds > 0 else 0.0,
        peak_memory_mb=peak_memory_mb(runtime.device),
        validation=validation,
        checkpoint=checkpoint if runtime.is_main else None,
        checkpoint_sha256=checkpoint_sha256 if runtime.is_main else None,
        sample_grid=sample_grid,
        weights_digest=weights_digest(network),
    )


def _latent_scale(codec: nn.Module) -> float | None:
    """The latent scale a bundle was trained with (None in pixel space), recorded in its `model.json`."""
    return codec.scale_factor if isinstance(codec, LatentCodec) else None


def _first_stage(stage: str, config: Config, out_dir: Path, device: torch.device) -> PixelCodec | LatentCodec:
    """The frozen codec between slices and diffusion samples (identity in pixel space)."""
    if stage == "autoencoder" or config.autoencoder.kind != "train":
        codec = PixelCodec() if stage == "autoencoder" else build_codec(config)
    else:
        codec, _ = load_model(out_dir / "autoencoder")
    return codec.to(device).eval().requires_grad_(False)


def _initial_network(
    stage: str, phase: Phase, config: Config, num_classes: int, previous: nn.Module | None, init_from: Path | None
) -> nn.Module:
    """The network a phase starts from: the previous phase's EMA, the stage-1 bundle (stage 2), or fresh."""
    if previous is not None:
        network = previous
    elif stage == "stage2":
        network = _load_stage1(init_from, config, num_classes)
    else:
        network = build_model(_spec(stage, phase, num_classes, volumetric=False), config)
    if phase.volumetric and not network.unet.volumetric_tuning:
        network.enable_volumetric_tuning(config.denoiser.temporal_attention)
    return network


def _load_stage1(init_from: Path | None, config: Config, num_classes: int) -> nn.Module:
    """The stage-1 bundle that stage 2 starts from, checked against this run's config and store."""
    if init_from is None:
        raise ValueError("stage 2 starts from a stage-1 model: pass init_from=<the stage-1 bundle folder>")
    network, meta = load_model(init_from)
    spec = meta["spec"]
    if spec["role"] != "stage1" or not spec["use_informed_slice"] or spec["num_classes"] != num_classes:
        raise StoreError(init_from, f"expected a stage-1 GEM-3D denoiser for {num_classes} classes, found {spec}")
    for section in ("autoencoder", "denoiser", "diffusion"):
        ours = getattr(config, section)
        # validated, so that a bundle written before a field existed compares with that field's default
        if type(ours).model_validate(meta["config"][section]) != ours:
            raise StoreError(init_from, f"the bundle's {section} config differs from this run's")
    return network


def _spec(stage: str, phase: Phase, num_classes: int, volumetric: bool) -> ModelSpec:
    role = {"autoencoder": "autoencoder", "slicegen": "slicegen"}.get(phase.network, stage)
    return ModelSpec(role, num_classes, phase.use_informed_slice, volumetric)
