"""Validation of a trained network (loss, autoencoder PSNR) and a cheap PNG grid of samples for a look."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import nn
from torch.utils.data import default_collate

from gem3d.anatomy import condition_classes, outlined_label
from gem3d.diffusion.schedule import make_sampling_scheduler
from gem3d.sampling.propagation import denoise_windows
from gem3d.seeds import derive_seed
from gem3d.splits import store_cases_of_split
from gem3d.training.engine import Runtime
from gem3d.training.phases import LOSSES, AutoencoderObjective, LossContext, make_dataset

SAMPLE_GRID = "samples.png"
GRID_SAMPLING_STEPS = 10
VALIDATION_WINDOWS = 8
VALIDATION_SLICES = 64
GRID_SLICES = 8


@torch.no_grad()
def evaluate(
    context: LossContext, network: nn.Module, store: Path, train_cases: list[str], stage_dir: Path, runtime: Runtime
) -> tuple[dict[str, float], Path]:
    """Validation metrics of the EMA network (val split, or the training cases when it is empty) and a PNG grid."""
    phase, config = context.phase, context.config
    val_cases = store_cases_of_split(store, "val")
    seed = derive_seed(config.seed, "validation")
    dataset = make_dataset(phase, store, val_cases or train_cases, config, seed, None)
    count = VALIDATION_WINDOWS if phase.network == "denoiser" else VALIDATION_SLICES
    indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round()})
    forward = AutoencoderObjective(network, config.autoencoder.kl_weight) if phase.network == "autoencoder" else network
    losses = []
    for index in indices:
        torch.manual_seed(derive_seed(seed, index))
        with runtime.autocast():
            losses.append(float(LOSSES[phase.network](context, forward, default_collate([dataset[index]]))))
    metrics = {
        "val_loss": float(np.mean(losses)),
        "val_items": float(len(indices)),
        "val_on_train": float(not val_cases),
    }
    if phase.network == "denoiser":
        rows = _window_rows(context, network, dataset[0], seed)
    else:
        truth = torch.stack([dataset[index]["image"] for index in indices])  # (N, 1, H, W)
        if phase.network == "autoencoder":
            generated = network.decode(network.encode(truth.to(context.device))).clamp(-1, 1).cpu()
            metrics["val_psnr"] = _psnr(generated, truth)
        else:
            truth = truth[:GRID_SLICES]
            positions = torch.stack([dataset[index]["position"] for index in indices[:GRID_SLICES]])
            generated = _generate_slices(context, network, positions, truth, seed)
        rows = [generated[:GRID_SLICES, 0], truth[:GRID_SLICES, 0]]
    return metrics, _write_grid(rows, stage_dir / SAMPLE_GRID)


def _psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (data range 2), over all their pixels."""
    return float(10 * torch.log10(4.0 / F.mse_loss(estimate.float(), truth.float())))


def _window_rows(context: LossContext, network: nn.Module, item: dict, seed: int) -> list[torch.Tensor]:
    """One window sampled with a few DDIM steps: rows mask | informed slice (at its offset) | generated | truth."""
    config, device, use_informed = context.config, context.device, context.phase.use_informed_slice
    truth = item["image"][:, 0]  # (L, H, W)
    informed = context.encode(item["informed_slice"][None].to(device))  # (1, C, h, w)
    outline = item["outline"][None] if "outline" in item else None
    mask_condition = context.condition(item["label"][None].to(device), outline, informed.shape[-1])  # (1, L, Cm, h, w)
    scheduler = make_sampling_scheduler(config.diffusion, "ddim")
    scheduler.set_timesteps(GRID_SAMPLING_STEPS, device=device)

    def denoiser(noisy, timesteps, mask_windows, informed_slices):
        return network(noisy, timesteps, mask_windows, informed_slices if use_informed else None)

    generated = denoise_windows(denoiser, scheduler, mask_condition, informed, [None], [seed], config.sampling.eta)
    pixels = context.codec.decode(generated[0]).clamp(-1, 1).cpu()[:, 0]  # (L, C, h, w) -> (L, H, W)
    informed_row = torch.full_like(truth, -1.0)
    if use_informed:
        informed_row[item["informed_offset"]] = item["informed_slice"][0]
    label, classes = item["label"], context.num_classes
    if outline is not None and context.config.denoiser.anatomy_outline:
        label, classes = outlined_label(label, item["outline"], classes), condition_classes(classes, True)
    mask_row = label.float() / max(1, classes) * 2 - 1
    return [mask_row, informed_row, pixels, truth]


def _generate_slices(
    context: LossContext, network: nn.Module, positions: torch.Tensor, truth: torch.Tensor, seed: int
) -> torch.Tensor:
    """Slices sampled by the slice model at relative `positions` (N,) with a few DDIM steps: (N, 1, H, W)."""
    device = context.device
    shape = context.encode(truth[:1].to(device)).shape[1:]  # (C, h, w)
    scheduler = make_sampling_scheduler(context.config.diffusion, "ddim")
    scheduler.set_timesteps(GRID_SAMPLING_STEPS, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    sample = torch.randn((len(positions), *shape), generator=generator, device=device)
    positions = positions.to(device)
    for timestep in scheduler.timesteps:
        prediction = network(sample, timestep.expand(len(positions)), positions)
        sample = scheduler.step(prediction, timestep, sample, eta=context.config.sampling.eta, generator=generator)
        sample = sample.prev_sample
    return context.codec.decode(sample).clamp(-1, 1).cpu()


def _write_grid(rows: list[torch.Tensor], path: Path) -> Path:
    """Rows of (N, H, W) images in [-1, 1] tiled into one greyscale PNG, written atomically."""
    tiles = torch.stack([row.float() for row in rows])  # (R, N, H, W)
    grid = rearrange(((tiles.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), "r n h w -> (r h) (n w)")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        Image.fromarray(grid.numpy()).save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
